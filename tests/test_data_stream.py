"""ShardCropSource: ranks read disjoint images with equal steps, exact resume (also after kill -9 of a
real process), corrupt images inside a shard, the one-line refusals; 2 ranks over gloo."""

import datetime
import json
import os
import socket
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ssl_aug.data.shard_pack import pack_shards
from ssl_aug.data.stream import ShardCropSource
from ssl_aug.errors import SslAugError

PLAN = [(24, (0.08, 1.0), (3 / 4, 4 / 3))] * 2 + [(12, (0.05, 0.3), (3 / 4, 4 / 3))] * 2
N_IMAGES = 96


def make_tree(root: Path, n: int = N_IMAGES, classes: int = 8):
    rng = np.random.default_rng(0)
    for i in range(n):
        d = root / f"c{i % classes}"
        d.mkdir(parents=True, exist_ok=True)
        w, h = (int(v) for v in rng.integers(30, 70, 2))
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(d / f"{i:03d}.jpg", quality=80)
    return root


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stream")
    dst = tmp / "shards"
    pack_shards(make_tree(tmp / "tree"), dst, shard_size=12, workers=1, verbose=False)
    return dst


def collect(src, limit=None):
    ids, crops = [], []
    for k, (i, c) in enumerate(src):
        ids.append(i.clone())
        crops.append([x.clone() for x in c])
        if limit is not None and k + 1 == limit:
            break
    return ids, crops


def test_ranks_read_disjoint_images_with_equal_steps(shards):
    seen, steps = [], []
    for rank in range(3):
        src = ShardCropSource(shards, PLAN, batch_size=5, rank=rank, world_size=3, workers=2, verbose=False)
        ids, crops = collect(src)
        steps.append(len(ids))
        assert len(ids) == len(src) == (N_IMAGES // 3) // 5
        assert [tuple(c.shape) for c in crops[0]] == [(5, 3, 24, 24)] * 2 + [(5, 3, 12, 12)] * 2
        assert crops[0][0].dtype == torch.uint8
        seen.append(torch.cat(ids))
    assert len(set(steps)) == 1
    flat = torch.cat(seen)
    assert len(set(flat.tolist())) == len(flat)  # disjoint across ranks, no repeats within a rank


def test_epochs_differ_and_batches_mix_classes(shards):
    src = ShardCropSource(shards, PLAN, batch_size=16, workers=2, verbose=False)
    e0 = torch.cat(collect(src)[0])
    src.set_epoch(1)
    e1 = torch.cat(collect(src)[0])
    assert not torch.equal(e0, e1)  # a new epoch: another shard order and shuffle
    labels = src.labels[e0[:16]]
    assert len(set(labels.tolist())) >= 5  # 8 classes packed in a global shuffle


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_continues_with_exactly_the_next_image(shards, workers):
    full = ShardCropSource(shards, PLAN, batch_size=4, seed=3, workers=workers, verbose=False)
    full.set_epoch(2)
    ref_ids, ref_crops = collect(full)
    part = ShardCropSource(shards, PLAN, batch_size=4, seed=3, workers=workers, verbose=False)
    part.set_epoch(2)
    collect(part, limit=7)
    state = part.state_dict()
    assert state["position"] == 7 and state["epoch"] == 2
    resumed = ShardCropSource(shards, PLAN, batch_size=4, seed=3, workers=workers, verbose=False)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)
    ids, crops = collect(resumed)
    assert len(ids) == len(ref_ids) - 7
    for a, b, ca, cb in zip(ids, ref_ids[7:], crops, ref_crops[7:]):
        assert torch.equal(a, b) and all(torch.equal(x, y) for x, y in zip(ca, cb))


def test_resume_refuses_other_class_list_and_worker_count(shards):
    src = ShardCropSource(shards, PLAN, batch_size=4, workers=2, verbose=False)
    state = src.state_dict()
    with pytest.raises(SslAugError, match="packed with 8 classes but this run was trained with 2"):
        src.load_state_dict(dict(state, classes=["a", "b"]))
    with pytest.raises(SslAugError, match="saved workers=1"):
        src.load_state_dict(dict(state, workers=1))


def test_more_readers_than_shards_is_one_line(shards):
    with pytest.raises(SslAugError, match=r"2 rank\(s\) x 5 worker\(s\) = 10 readers but only 8 shard\(s\)") as e:
        ShardCropSource(shards, PLAN, batch_size=4, world_size=2, workers=5)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("decode", ["cpu", "device"])
def test_corrupt_image_inside_a_shard_is_counted_and_replaced(shards, tmp_path, capsys, decode):
    import shutil

    dst = tmp_path / "damaged"
    shutil.copytree(shards, dst)
    with tarfile.open(dst / "shard-00003.tar") as t:
        m = next(m for m in t if m.name.endswith(".jpg"))
    with open(dst / "shard-00003.tar", "r+b") as f:  # same length: offsets and checksums of others stay
        f.seek(m.offset_data)
        f.write(b"\0" * 16)
    src = ShardCropSource(dst, PLAN, batch_size=4, workers=2, decode=decode)
    ids, crops = collect(src)
    assert src.skipped == 1 and len(ids) == len(src)
    assert all(c.shape[0] == 4 for batch in crops for c in batch)
    err = capsys.readouterr().err
    assert err.count("skipped corrupt image") == 1


def test_device_decode_path_yields_the_cpu_paths_images_and_crops(shards):
    """decode="device" (workers only read; the batch's bytes cross as one tensor, decoded in the training
    process) on the CPU: the same image ids per batch as the worker-decode path, crops a few grey levels
    apart (roi_align's area average vs the triangle antialias when shrinking)."""
    ref = collect(ShardCropSource(shards, PLAN, batch_size=8, seed=1, workers=2, verbose=False))
    dev = collect(ShardCropSource(shards, PLAN, batch_size=8, seed=1, workers=2, decode="device", verbose=False))
    assert len(dev[0]) == len(ref[0]) == N_IMAGES // 8
    for a, b, ca, cb in zip(dev[0], ref[0], dev[1], ref[1]):
        assert torch.equal(a, b)
        assert [c.shape for c in ca] == [c.shape for c in cb]
        assert all((x.float() - y.float()).abs().mean() < 12 for x, y in zip(ca, cb))  # noise images: sharp


@pytest.mark.parametrize("decode", ["cpu", "device"])
def test_next_epoch_started_ahead_gives_the_batches_of_a_fresh_start(shards, decode):
    """The next epoch's workers start during this epoch's tail; what they yield equals a fresh iterator's."""
    src = ShardCropSource(shards, PLAN, batch_size=4, seed=2, workers=2, decode=decode, verbose=False)
    collect(src)
    assert src._ahead is not None and src._ahead[0] == (1, 0)
    src.set_epoch(1)
    ids, crops = collect(src)
    fresh = ShardCropSource(shards, PLAN, batch_size=4, seed=2, workers=2, decode=decode, verbose=False)
    fresh.set_epoch(1)
    ref_ids, ref_crops = collect(fresh)
    assert len(ids) == len(ref_ids) == len(src)
    for a, b, ca, cb in zip(ids, ref_ids, crops, ref_crops):
        assert torch.equal(a, b) and all(torch.equal(x, y) for x, y in zip(ca, cb))
    resumed = ShardCropSource(shards, PLAN, batch_size=4, seed=2, workers=2, decode=decode, verbose=False)
    collect(resumed)  # starts epoch 1 ahead; a resume elsewhere drops it and starts where it was asked
    resumed.load_state_dict(dict(resumed.state_dict(), epoch=1, position=5))
    assert torch.equal(torch.cat(collect(resumed)[0]), torch.cat(ref_ids[5:]))


def _rank_worker(rank, port, root, out):
    import torch.distributed as tdist

    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                             timeout=datetime.timedelta(seconds=60))
    try:
        src = ShardCropSource(root, PLAN, batch_size=6, rank=rank, world_size=2, workers=2, verbose=False)
        ids = torch.cat([i for i, _ in src])
        steps = torch.tensor([len(ids) // 6])
        gathered = [torch.zeros_like(ids) for _ in range(2)]
        tdist.all_gather(gathered, ids)
        all_steps = [torch.zeros_like(steps) for _ in range(2)]
        tdist.all_gather(all_steps, steps)
        torch.save({"ids": gathered, "steps": all_steps}, Path(out) / f"r{rank}.pt")
    finally:
        tdist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_read_disjoint_images_with_equal_steps(shards, tmp_path):
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_rank_worker, args=(r, port, str(shards), str(tmp_path))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        if p.is_alive():
            p.kill()
    assert [p.exitcode for p in procs] == [0, 0]
    res = torch.load(tmp_path / "r0.pt")
    a, b = res["ids"]
    assert [int(s) for s in res["steps"]] == [8, 8]  # 96 images / 2 ranks / batch 6
    assert not set(a.tolist()) & set(b.tolist())


KILL_SCRIPT = """
import json, sys, time, torch
from ssl_aug.data.stream import ShardCropSource
from ssl_aug.io import atomic_write_json
plan = {plan!r}
src = ShardCropSource({root!r}, plan, batch_size=4, seed=1, workers=2, verbose=False)
log = {log!r}
try:
    saved = json.load(open(log))
except FileNotFoundError:
    saved = {{"state": None, "ids": []}}
if saved["state"]:
    src.load_state_dict(saved["state"])
for ids, crops in src:
    saved["ids"] += ids.tolist()
    saved["crop_sums"] = saved.get("crop_sums", []) + [int(c.sum()) for c in crops]
    saved["state"] = src.state_dict()
    atomic_write_json(log, saved)
    time.sleep({delay})
"""


@pytest.mark.slow
def test_resume_after_kill_9_of_a_real_process(shards, tmp_path):
    log = tmp_path / "progress.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.getcwd())
    script = textwrap.dedent(KILL_SCRIPT).format(plan=PLAN, root=str(shards), log=str(log), delay=0.4)
    proc = subprocess.Popen([sys.executable, "-c", script], env=env)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if len(json.loads(log.read_text())["ids"]) >= 12:
                break
        except (FileNotFoundError, ValueError):
            pass
        time.sleep(0.05)
    proc.kill()  # SIGKILL
    proc.wait()
    done = len(json.loads(log.read_text())["ids"])
    assert 12 <= done < N_IMAGES
    fast = textwrap.dedent(KILL_SCRIPT).format(plan=PLAN, root=str(shards), log=str(log), delay=0)
    assert subprocess.run([sys.executable, "-c", fast], env=env, timeout=120).returncode == 0
    got = json.loads(log.read_text())
    ref = ShardCropSource(shards, PLAN, batch_size=4, seed=1, workers=2, verbose=False)
    ref_ids, ref_crops = collect(ref)
    assert got["ids"] == torch.cat(ref_ids).tolist()
    assert got["crop_sums"] == [int(c.sum()) for batch in ref_crops for c in batch]
