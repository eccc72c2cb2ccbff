"""Evaluation streams from a shard pack: the images are an ImageStore, subsets and hold-outs are row lists,
features are computed chunk by chunk, and no evaluator decodes more than it uses."""

import numpy as np
import pytest
import torch
from PIL import Image

from ssl_aug.data import load_dataset
from ssl_aug.data.image_store import ImageStore, image_batches, pixels, same_images
from ssl_aug.data.shard_eval import ShardImages, eval_batches
from ssl_aug.data.shard_pack import pack_shards
from ssl_aug.evaluation import build_evaluator, evaluate_encoder, extract_features
from ssl_aug.models import build_backbone
from ssl_aug.workflows.evaluate_encoder import load_eval_data

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    tree = tmp_path_factory.mktemp("tree")
    rng = np.random.default_rng(0)
    for c in range(4):
        (tree / f"c{c}").mkdir()
        for i in range(9):
            w, h = (int(v) for v in rng.integers(30, 70, 2))
            pix = (rng.random((h, w, 3)) * 60 + 60 * c).astype(np.uint8)
            Image.fromarray(pix).save(tree / f"c{c}" / f"{i}.jpg", quality=90)
    dst = tmp_path_factory.mktemp("packed") / "shards"
    pack_shards(tree, dst, shard_size=7, workers=1, seed=1, verbose=False)
    return dst


def _gathered(folder, size):
    """The whole eval view gathered the plain way (each id written to its row)."""
    ids_all = []
    out = {}
    for ids, _, x in eval_batches(folder, size, batch=5):
        for i, img in zip(ids.tolist(), x):
            out[i] = img
            ids_all.append(i)
    return torch.stack([out[i] for i in sorted(ids_all)])


def test_store_rows_decode_like_the_plain_gather(pack):
    store = ShardImages(pack, 24)
    full = _gathered(pack, 24)
    assert isinstance(store, ImageStore) and tuple(store.shape) == (36, 3, 24, 24) and len(store) == 36
    assert torch.equal(store.decode(), full)
    idx = torch.tensor([30, 2, 2, 17, 0, 35])  # unsorted, with a repeat, across shards
    sub = store[idx]
    assert isinstance(sub, ShardImages) and torch.equal(sub.decode(), full[idx])
    mask = torch.arange(36) % 3 == 0
    assert torch.equal(store[mask].decode(), full[mask])
    assert torch.equal(store[5:20:4].decode(), full[5:20:4])
    assert torch.equal(store[-1], full[-1]) and torch.equal(store[idx][1:3].decode(), full[idx][1:3])
    assert torch.equal(torch.cat(list(store.chunks(8))), full)
    assert [len(x) for x in image_batches(store, 8)] == [8, 8, 8, 8, 4]
    assert torch.equal(pixels(full), full) and torch.equal(pixels(store), full)
    assert same_images(store[idx], store[idx]) and not same_images(store[idx], store[idx.flip(0)])
    assert store.fingerprint() != ShardImages(pack, 28).fingerprint()
    assert not same_images(store, full)


def test_the_shards_data_set_is_a_store_and_subsets_stay_lazy(pack, monkeypatch):
    decoded = []
    original = ShardImages.decode
    monkeypatch.setattr(ShardImages, "decode", lambda self: decoded.append(len(self)) or original(self))
    ds = load_dataset("shards", split="train", root=str(pack), size=24)
    sub = ds.subset(12)
    assert isinstance(ds.images, ShardImages) and isinstance(sub.images, ShardImages) and len(sub) == 12
    assert torch.bincount(sub.labels).tolist() == [3, 3, 3, 3]
    (bank, query), *_ = load_eval_data({"name": "shards", "root": str(pack), "options": {"size": 24},
                                        "split": "train", "test_split": "train"})
    assert isinstance(bank[0], ShardImages) and isinstance(query[0], ShardImages)
    assert len(bank[0]) + len(query[0]) == 36
    assert decoded == []  # a subset and a hold-out decode nothing
    assert torch.equal(ds.decoded().images, ds.images.decode())


def test_features_of_a_store_equal_those_of_its_pixels_and_are_cached_by_rows(pack, tmp_path):
    torch.manual_seed(0)
    enc = build_backbone("small_cnn").eval()
    store = ShardImages(pack, 24)
    f_store = extract_features(enc, store, MEAN, STD, batch_size=8, progress=False)
    f_tensor = extract_features(enc, store.decode(), MEAN, STD, batch_size=8, progress=False)
    assert torch.equal(f_store, f_tensor)
    extract_features(enc, store, MEAN, STD, batch_size=8, progress=False, cache_dir=tmp_path)
    cached = extract_features(enc, store, MEAN, STD, batch_size=8, progress=False, cache_dir=tmp_path)
    assert torch.equal(cached, f_store) and len(list(tmp_path.glob("features-*.pt"))) == 1
    extract_features(enc, store[:10], MEAN, STD, batch_size=8, progress=False, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("features-*.pt"))) == 2  # other rows, another key


def test_evaluators_on_a_store_decode_at_most_a_batch_and_match_the_tensor_path(pack, monkeypatch, tmp_path):
    torch.manual_seed(0)
    enc = build_backbone("small_cnn").eval()
    ds = load_dataset("shards", split="train", root=str(pack), size=24)
    bank, query = ds.images[torch.arange(0, 36, 2)], ds.images[torch.arange(1, 36, 2)]
    by, qy = ds.labels[0::2], ds.labels[1::2]
    chosen = lambda: [build_evaluator("linear", {"epochs": 20}), build_evaluator("tta", {"views": "flip", "k": 5}),  # noqa: E731
                      build_evaluator("invariance", {"images": 6}), build_evaluator("neighbours", {"queries": 3, "k": 2})]
    reference = evaluate_encoder(enc, MEAN, STD, (bank.decode(), by), (query.decode(), qy), ks=(5,),
                                 batch_size=8, progress=False, evaluators=chosen(), run_dir=tmp_path / "a")
    decoded = []
    original = ShardImages.decode
    monkeypatch.setattr(ShardImages, "decode", lambda self: decoded.append(len(self)) or original(self))
    streamed = evaluate_encoder(enc, MEAN, STD, (bank, by), (query, qy), ks=(5,), batch_size=8, progress=False,
                                evaluators=chosen(), run_dir=tmp_path / "b")
    assert decoded and max(decoded) <= 8  # chunks of the batch, the invariance subset, the neighbour cells
    for name in ("knn", "linear", "tta", "neighbours"):
        assert streamed[name] == reference[name], name
    assert streamed["invariance"]["families"] == reference["invariance"]["families"]
    decoded.clear()
    loo = evaluate_encoder(enc, MEAN, STD, (bank, by), (bank, by), ks=(5,), batch_size=8, progress=False)
    assert loo["knn"]["leave_one_out"] is True
    assert sum(decoded) == len(bank)  # queries = bank: its features are computed (and its images decoded) once
