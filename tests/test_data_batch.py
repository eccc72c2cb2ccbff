"""BatchSource and ShardStream: coverage, rank disjointness, determinism, mid-epoch resume."""

import numpy as np
import pytest
import torch

from ssl_aug.data import BatchSource, ImageDataset, ShardStream
from ssl_aug.errors import SslAugError


def _images(n, h=3, w=2):
    # image i is filled with distinct bytes, so gathered images identify their indices
    return torch.arange(n * 3 * h * w, dtype=torch.int64).remainder(251).to(torch.uint8).view(n, 3, h, w)


def _run(src):
    return [(i.clone(), x.clone()) for i, x in src]


def _same(a, b):
    return len(a) == len(b) and all(torch.equal(i, j) and torch.equal(x, y) for (i, x), (j, y) in zip(a, b))


def _same_resume(resumed, rest, nxt, n_rest):
    """The resumed source yields exactly `rest` (the rest of the saved epoch), then epoch `nxt`."""
    assert len(rest) == n_rest
    if rest:
        assert _same(_run(resumed), rest)
    assert _same(_run(resumed), nxt) and len(nxt) == len(resumed)


# --- BatchSource ------------------------------------------------------------------------------

def test_batchsource_covers_every_index_once():
    imgs = _images(103)
    src = BatchSource(imgs, 10, seed=1, drop_last=False)
    out = _run(src)
    assert len(out) == len(src) == 11 and [len(i) for i, _ in out] == [10] * 10 + [3]
    idx = torch.cat([i for i, _ in out])
    assert sorted(idx.tolist()) == list(range(103)) and idx.tolist() != list(range(103))
    for i, x in out:
        assert x.dtype == torch.uint8 and i.dtype == torch.int64 and torch.equal(x, imgs[i])
    full = BatchSource(imgs, 10, seed=1)  # drop_last: 10 full batches, 100 distinct indices
    idx = torch.cat([i for i, _ in _run(full)])
    assert len(full) == 10 and len(set(idx.tolist())) == 100


def test_batchsource_ranks_disjoint_equal_slices_of_one_permutation():
    imgs = _images(100)
    ranks = [BatchSource(imgs, 8, seed=5, rank=r, world_size=3) for r in range(3)]
    assert {len(r) for r in ranks} == {4}  # 33 per rank -> 4 full batches of 8
    seen = [torch.cat([i for i, _ in _run(r)]) for r in ranks]
    assert all(len(s) == 32 for s in seen)
    assert len(set(torch.cat(seen).tolist())) == 96  # pairwise disjoint
    single = BatchSource(imgs, 8, seed=5).epoch_indices(0)
    assert torch.equal(torch.cat([r.epoch_indices(0) for r in ranks]), single[:99])


def test_batchsource_seed_and_epoch_determinism():
    imgs = _images(50)

    def order(seed, epoch):
        s = BatchSource(imgs, 7, seed=seed)
        s.set_epoch(epoch)
        return torch.cat([i for i, _ in s]).tolist()

    assert order(3, 0) == order(3, 0) and order(3, 2) == order(3, 2)
    assert order(3, 0) != order(4, 0) and order(3, 0) != order(3, 1)
    s = BatchSource(imgs, 7, seed=3)
    e0 = torch.cat([i for i, _ in s]).tolist()
    assert s.state_dict()["epoch"] == 0 and s.state_dict()["position"] == len(s) == 7  # finished epoch 0
    assert torch.cat([i for i, _ in s]).tolist() == order(3, 1)  # again without set_epoch: next epoch
    s.set_epoch(1)  # the current epoch: position kept (a finished epoch stays finished)
    assert s.state_dict()["position"] == 7
    s.set_epoch(0)
    assert torch.cat([i for i, _ in s]).tolist() == e0


@pytest.mark.parametrize("stop", [0, 2, 3])
def test_batchsource_resume_mid_epoch(stop):
    imgs = _images(61)
    a = BatchSource(imgs, 8, seed=9, world_size=2, rank=1)
    a.set_epoch(4)
    it = iter(a)
    for _ in range(stop):
        next(it)
    state = a.state_dict()
    assert state["epoch"] == 4 and state["position"] == stop
    rest = [(i.clone(), x.clone()) for i, x in it]  # rest of epoch 4
    nxt = _run(a)  # epoch 5
    b = BatchSource(imgs, 8, seed=9, world_size=2, rank=1)
    b.load_state_dict(state)
    b.set_epoch(4)  # a resumed trainer calls set_epoch as usual: the position is kept
    _same_resume(b, rest, nxt, len(a) - stop)


def test_batchsource_bad_input_and_mismatched_resume():
    imgs = _images(20)
    with pytest.raises(SslAugError, match="uint8"):
        BatchSource(imgs.float(), 4)
    with pytest.raises(SslAugError, match="batch_size"):
        BatchSource(imgs, 0)
    with pytest.raises(SslAugError, match="rank 2 / world_size 2"):
        BatchSource(imgs, 4, rank=2, world_size=2)
    state = BatchSource(imgs, 4, seed=1).state_dict()
    with pytest.raises(SslAugError, match="saved batch_size=4 but this run has batch_size=5"):
        BatchSource(imgs, 5, seed=1).load_state_dict(state)
    ds = ImageDataset(imgs, torch.zeros(20, dtype=torch.int64), ["a"], "d")
    assert len(BatchSource(ds, 4)) == 5  # an ImageDataset is accepted too


# --- ShardStream ------------------------------------------------------------------------------

SIZES = (9, 14, 5, 11, 7)


@pytest.fixture
def shards(tmp_path):
    imgs = _images(sum(SIZES), h=4, w=3)
    o = 0
    for k, n in enumerate(SIZES):
        np.savez(tmp_path / f"part_{k}.npz", x=imgs[o:o + n].permute(0, 2, 3, 1).numpy(),
                 y=np.zeros(n, np.int64))
        o += n
    return tmp_path, imgs


def test_shardstream_covers_every_index_with_correct_images(shards):
    folder, imgs = shards
    st = ShardStream(folder, 4, seed=2, drop_last=False)
    reads = []
    orig = st._read
    st._read = lambda s: reads.append(s) or orig(s)
    out = _run(st)
    assert len(out) == len(st) == 12 and sum(len(i) for i, _ in out) == 46
    idx = torch.cat([i for i, _ in out])
    assert sorted(idx.tolist()) == list(range(46))
    assert all(torch.equal(x, imgs[i]) and x.is_contiguous() for i, x in out)
    assert sorted(reads) == list(range(5))  # each shard read once per epoch
    # shard-level order: the rows of each shard form one contiguous run of the epoch order
    shard_of = torch.repeat_interleave(torch.arange(5), torch.tensor(SIZES))[idx]
    assert len(torch.unique_consecutive(shard_of)) == 5 and shard_of.tolist() != sorted(shard_of.tolist())


def test_shardstream_ranks_disjoint_equal(shards):
    folder, _ = shards
    per = [torch.cat([i for i, _ in ShardStream(folder, 3, seed=1, rank=r, world_size=2)]) for r in range(2)]
    assert len(per[0]) == len(per[1]) == 21  # sum(n // 2) = 22 -> 7 full batches of 3
    assert not set(per[0].tolist()) & set(per[1].tolist())


def test_shardstream_determinism_and_prefetch_equivalence(shards):
    folder, _ = shards

    def order(seed, epoch, prefetch=True):
        st = ShardStream(folder, 5, seed=seed, prefetch=prefetch)
        st.set_epoch(epoch)
        return torch.cat([i for i, _ in st]).tolist()

    assert order(1, 0) == order(1, 0) == order(1, 0, prefetch=False)
    assert order(1, 0) != order(2, 0) and order(1, 0) != order(1, 1)
    shard_first = {ShardStream(folder, 5, seed=1).epoch_plan(e)[0][0].item() for e in range(8)}
    assert len(shard_first) > 1  # the shard order is reshuffled per epoch


@pytest.mark.parametrize("stop", [1, 3, 6])
def test_shardstream_resume_mid_epoch(shards, stop):
    folder, _ = shards
    a = ShardStream(folder, 4, seed=7, world_size=2, rank=0, drop_last=False)
    a.set_epoch(2)
    it = iter(a)
    for _ in range(stop):
        next(it)
    state = a.state_dict()
    rest = [(i.clone(), x.clone()) for i, x in it]
    nxt = _run(a)
    b = ShardStream(folder, 4, seed=7, world_size=2, rank=0, drop_last=False)
    b.load_state_dict(state)
    b.set_epoch(2)
    _same_resume(b, rest, nxt, len(a) - stop)


def test_shardstream_bad_input(tmp_path):
    with pytest.raises(SslAugError, match="no .npz shards"):
        ShardStream(tmp_path, 4)
    np.savez(tmp_path / "a.npz", x=np.zeros((4, 5, 5), np.uint8))
    with pytest.raises(SslAugError, match=r"a.npz: x has shape \(4, 5, 5\)"):
        ShardStream(tmp_path, 4)
    np.savez(tmp_path / "a.npz", x=np.zeros((4, 5, 5, 3), np.uint8))
    np.savez(tmp_path / "b.npz", x=np.zeros((4, 6, 5, 3), np.uint8))
    with pytest.raises(SslAugError, match="b.npz: images are 6x5"):
        ShardStream(tmp_path, 4)
    with pytest.raises(SslAugError, match="does not exist"):
        ShardStream(tmp_path / "nope", 4)
