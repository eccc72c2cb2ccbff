"""Data sources: registry, CIFAR-10 shards (real data), torchvision CIFAR / STL-10 layouts on fake
files in the real formats (checked against torchvision's own loaders), npz validation."""

import json
import os
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets as tvd

from ssl_aug.data import DATASETS, ImageDataset, load_dataset
from ssl_aug.errors import SslAugError

DATA = os.environ.get("SSL_AUG_DATA")


@pytest.fixture
def no_md5(monkeypatch):
    """Let torchvision's loaders read our fake files (they insist on the real files' md5)."""
    import torchvision.datasets.cifar as tc
    import torchvision.datasets.stl10 as ts

    monkeypatch.setattr(tc, "check_integrity", lambda *a, **k: True)
    monkeypatch.setattr(ts, "check_integrity", lambda *a, **k: True)


# --- registry ---------------------------------------------------------------------------------

def test_registry_errors_name_allowed_values():
    with pytest.raises(SslAugError) as e:
        load_dataset("imagenet")
    msg = str(e.value)
    assert "'imagenet'" in msg and all(n in msg for n in DATASETS) and "\n" not in msg
    with pytest.raises(SslAugError, match=r"unknown split 'val' for dataset 'cifar10'; allowed: train, test"):
        load_dataset("cifar10", "val")
    with pytest.raises(SslAugError, match="unlabeled"):
        load_dataset("stl10", "extra")


def test_embedded_dispatches_to_lazy_module(monkeypatch):
    calls = []
    fake = types.ModuleType("ssl_aug.data.embedded")

    def load_embedded(split, root=None, **opts):
        calls.append((split, root, opts))
        return ImageDataset(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.tensor([0, 1]), ["a", "b"], "e")

    fake.load_embedded = load_embedded
    monkeypatch.setitem(sys.modules, "ssl_aug.data.embedded", fake)
    ds = load_dataset("embedded", "test", root="r", seed=3)
    assert len(ds) == 2 and calls == [("test", "r", {"seed": 3})]


def test_imagedataset_validates():
    with pytest.raises(ValueError, match="uint8"):
        ImageDataset(torch.zeros(2, 3, 4, 4), torch.zeros(2, dtype=torch.int64), [], "x")
    with pytest.raises(ValueError, match="int64"):
        ImageDataset(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64), [], "x")
    nc = torch.zeros(2, 4, 4, 3, dtype=torch.uint8).permute(0, 3, 1, 2)
    assert ImageDataset(nc, torch.zeros(2, dtype=torch.int64), ["a"], "x").images.is_contiguous()


# --- CIFAR-10 npz shards (the real data) -------------------------------------------------------

@pytest.mark.skipif(not DATA, reason="SSL_AUG_DATA not set (folder holding cifar10/ npz shards)")
def test_real_cifar10_shards():
    train = load_dataset("cifar10", "train")  # root None -> $SSL_AUG_DATA, parent of cifar10/
    assert train.images.shape == (50000, 3, 32, 32) and train.images.dtype == torch.uint8
    assert train.class_counts().tolist() == [5000] * 10
    assert train.classes[0] == "airplane" and train.classes[9] == "truck"
    assert train.labels[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]  # README.txt reference values
    assert train.images[0, 0, 0, :5].tolist() == [59, 43, 50, 68, 98]
    test = load_dataset("cifar10", "test", root=Path(DATA) / "cifar10")  # the shard folder itself
    assert test.images.shape == (10000, 3, 32, 32) and test.class_counts().tolist() == [1000] * 10
    assert test.images[0, 0, 0, :5].tolist() == [158, 159, 165, 166, 160]
    assert test.labels[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]


def test_missing_cifar_says_where_and_how(tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_AUG_DATA", str(tmp_path / "nothing"))
    with pytest.raises(SslAugError) as e:
        load_dataset("cifar100", "test")
    msg = str(e.value)
    assert str(tmp_path / "nothing") in msg and "data.download=true" in msg and "--download" in msg
    assert "\n" not in msg
    with pytest.raises(SslAugError, match="stl10_binary"):
        load_dataset("stl10", "train", root=tmp_path)


# --- torchvision CIFAR layout -----------------------------------------------------------------

def _write_cifar10(root, n_per_batch=6):
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {"batch_label": name, "data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
                 "labels": rng.integers(0, 10, n_per_batch).tolist(),
                 "filenames": [f"{name}_{i}.png" for i in range(n_per_batch)]}
        with open(d / name, "wb") as f:
            pickle.dump(entry, f)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names, "num_cases_per_batch": n_per_batch, "num_vis": 3072}, f)


def test_cifar10_pickles_match_torchvision(tmp_path, no_md5):
    _write_cifar10(tmp_path)
    for split, train in (("train", True), ("test", False)):
        ds = load_dataset("cifar10", split, root=tmp_path)
        ref = tvd.CIFAR10(str(tmp_path), train=train, download=False)
        assert torch.equal(ds.images, torch.from_numpy(ref.data).permute(0, 3, 1, 2))
        assert ds.labels.tolist() == ref.targets and ds.classes == ref.classes
    # independent of torchvision: pixel (c, y, x) of image i is byte c*1024 + y*32 + x of its row
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_2", "rb") as f:
        raw = pickle.load(f, encoding="latin1")["data"]
    ds = load_dataset("cifar10", "train", root=tmp_path)
    assert len(ds) == 30 and ds.images[6 + 4, 2, 5, 7] == raw[4, 2 * 1024 + 5 * 32 + 7]


def test_cifar100_pickles_fine_and_coarse(tmp_path, no_md5):
    d = tmp_path / "cifar100" / "cifar-100-python"  # parent-of-<name> layout also accepted
    d.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name, n in (("train", 8), ("test", 5)):
        with open(d / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         "fine_labels": rng.integers(0, 100, n).tolist(),
                         "coarse_labels": rng.integers(0, 20, n).tolist()}, f)
    with open(d / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"f{i}" for i in range(100)],
                     "coarse_label_names": [f"c{i}" for i in range(20)]}, f)
    fine = load_dataset("cifar100", "test", root=tmp_path)
    ref = tvd.CIFAR100(str(tmp_path / "cifar100"), train=False, download=False)
    assert torch.equal(fine.images, torch.from_numpy(ref.data).permute(0, 3, 1, 2))
    assert fine.labels.tolist() == ref.targets and fine.classes == ref.classes
    coarse = load_dataset("cifar100", "train", root=tmp_path, label_type="coarse")
    assert len(coarse.classes) == 20 and coarse.classes[3] == "c3" and int(coarse.labels.max()) < 20
    with pytest.raises(SslAugError, match="label_type 'middle'.*fine, coarse"):
        load_dataset("cifar100", "train", root=tmp_path, label_type="middle")


def test_cifar_bad_pickles(tmp_path):
    _write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(SslAugError, match="missing CIFAR batch file .*data_batch_3"):
        load_dataset("cifar10", "train", root=tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(SslAugError, match="test_batch: not a CIFAR python batch"):
        load_dataset("cifar10", "test", root=tmp_path)


# --- STL-10 binary layout ---------------------------------------------------------------------

def _write_stl(root, n_train=7, n_test=4, n_unl=5):
    d = root / "stl10_binary"
    d.mkdir(parents=True)
    rng = np.random.default_rng(2)
    for split, n in (("train", n_train), ("test", n_test), ("unlabeled", n_unl)):
        rng.integers(0, 256, n * 3 * 96 * 96, dtype=np.uint8).tofile(d / f"{split}_X.bin")
        if split != "unlabeled":
            rng.integers(1, 11, n, dtype=np.uint8).tofile(d / f"{split}_y.bin")
    (d / "class_names.txt").write_text("\n".join(
        ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]) + "\n")
    folds = [" ".join(map(str, rng.permutation(n_train)[:3])) for _ in range(10)]
    (d / "fold_indices.txt").write_text("\n".join(folds))
    return d


@pytest.mark.parametrize("split,fold", [("train", None), ("test", None), ("unlabeled", None),
                                        ("train+unlabeled", None), ("train", 4)])
def test_stl10_matches_torchvision(tmp_path, no_md5, split, fold):
    _write_stl(tmp_path)
    ds = load_dataset("stl10", split, root=tmp_path, fold=fold)
    ref = tvd.STL10(str(tmp_path), split=split, folds=fold, download=False)
    assert ds.images.shape[1:] == (3, 96, 96)
    assert torch.equal(ds.images, torch.from_numpy(ref.data))
    assert ds.labels.tolist() == ref.labels.tolist() and ds.classes == ref.classes


def test_stl10_layout_independent_and_bad_files(tmp_path):
    d = _write_stl(tmp_path / "stl10")  # root/stl10/stl10_binary is found from root
    raw = np.fromfile(d / "test_X.bin", dtype=np.uint8).reshape(-1, 3, 96, 96)
    ds = load_dataset("stl10", "test", root=tmp_path)
    assert ds.images[2, 1, 10, 40] == raw[2, 1, 40, 10]  # stored column-major
    assert ds.labels.tolist() == (np.fromfile(d / "test_y.bin", dtype=np.uint8).astype(int) - 1).tolist()
    with open(d / "test_X.bin", "ab") as f:
        f.write(b"\x00" * 5)
    with pytest.raises(SslAugError, match="test_X.bin: .* not a multiple"):
        load_dataset("stl10", "test", root=tmp_path)
    np.zeros(3, np.uint8).tofile(d / "train_y.bin")
    with pytest.raises(SslAugError, match="train_y.bin: 3 labels for 7 images"):
        load_dataset("stl10", "train", root=tmp_path)
    with pytest.raises(SslAugError, match="fold 12"):
        _write_stl(tmp_path / "ok")
        load_dataset("stl10", "train", root=tmp_path / "ok", fold=12)


# --- npz shard folders ------------------------------------------------------------------------

def _shard(path, n=4, hw=(5, 6), labels=None, **extra):
    rng = np.random.default_rng(abs(hash(str(path))) % 2**32)
    x = rng.integers(0, 256, (n, *hw, 3), dtype=np.uint8)
    y = np.asarray(labels if labels is not None else rng.integers(0, 3, n), dtype=np.int64)
    np.savez(path, x=x, y=y, **extra)
    return x, y


def test_npz_splits_order_and_classes(tmp_path):
    parts = [_shard(tmp_path / f"data_train_{i}.npz") for i in (10, 2, 1)]  # natural order: 1, 2, 10
    xt, yt = _shard(tmp_path / "data_test.npz")
    (tmp_path / "classes.txt").write_text("a\nb\nc\n")
    tr = load_dataset("npz", "train", root=tmp_path)
    order = [parts[2], parts[1], parts[0]]
    assert torch.equal(tr.images, torch.from_numpy(np.concatenate([p[0] for p in order])).permute(0, 3, 1, 2))
    assert tr.labels.tolist() == np.concatenate([p[1] for p in order]).tolist()
    assert tr.classes == ["a", "b", "c"]
    te = load_dataset("npz", "test", root=tmp_path)
    assert torch.equal(te.images[1], torch.from_numpy(xt[1]).permute(2, 0, 1)) and len(te) == 4
    assert len(load_dataset("npz", "all", root=tmp_path)) == 16
    with pytest.raises(SslAugError, match="no .npz shards for split 'val'"):
        load_dataset("npz", "val", root=tmp_path)
    sub = tmp_path / "nested" / "val"
    sub.mkdir(parents=True)
    _shard(sub / "anything.npz", labels=[0, 4, 1, 2])
    (tmp_path / "nested" / "meta.json").write_text(json.dumps({"classes": list("vwxyz")}))
    va = load_dataset("npz", "val", root=tmp_path / "nested")
    assert va.classes == list("vwxyz") and va.labels.tolist() == [0, 4, 1, 2]
    np.savez(tmp_path / "nested" / "unl_all.npz", x=np.zeros((3, 5, 6, 3), np.uint8))  # no y -> unlabeled
    assert load_dataset("npz", "all", root=tmp_path / "nested").labels.tolist() == [-1, -1, -1]


@pytest.mark.parametrize("x,y,match", [
    (np.zeros((4, 5, 6), np.uint8), np.zeros(4, np.int64),
     r"x has shape \(4, 5, 6\).*expected \(N,H,W,3\) uint8"),
    (np.zeros((4, 3, 5, 6), np.uint8), np.zeros(4, np.int64), r"x has shape \(4, 3, 5, 6\)"),
    (np.zeros((4, 5, 6, 3), np.float32), np.zeros(4, np.int64), "dtype float32"),
    (np.zeros((4, 5, 6, 3), np.uint8), np.zeros(3, np.int64), r"y has shape \(3,\).*expected \(4,\) integer"),
    (np.zeros((4, 5, 6, 3), np.uint8), np.zeros((4, 1), np.int64), r"y has shape \(4, 1\)"),
    (np.zeros((4, 5, 6, 3), np.uint8), np.zeros(4, np.float64), "dtype float64"),
    (np.zeros((4, 5, 6, 3), np.uint8), np.array([0, 1, 3, 2]),
     r"labels span 0..3; allowed -1 \(unlabeled\) or 0..2"),
    (np.zeros((4, 5, 6, 3), np.uint8), np.array([0, -2, 1, 2]), "labels span -2..2"),
])
def test_npz_bad_arrays_name_the_file(tmp_path, x, y, match):
    (tmp_path / "classes.txt").write_text("a\nb\nc\n")
    np.savez(tmp_path / "bad_train.npz", x=x, y=y)
    with pytest.raises(SslAugError, match=match) as e:
        load_dataset("npz", "train", root=tmp_path)
    assert str(e.value).startswith(str(tmp_path / "bad_train.npz")) and "\n" not in str(e.value)


def test_npz_bad_files(tmp_path):
    np.savez(tmp_path / "a_train.npz", images=np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(SslAugError, match=r"a_train.npz: no array 'x' \(found images\)"):
        load_dataset("npz", "train", root=tmp_path)
    (tmp_path / "a_train.npz").write_bytes(b"garbage")
    with pytest.raises(SslAugError, match="a_train.npz: not a readable npz file"):
        load_dataset("npz", "train", root=tmp_path)
    _shard(tmp_path / "a_train.npz", hw=(5, 6))
    _shard(tmp_path / "b_train.npz", hw=(6, 6))
    with pytest.raises(SslAugError, match="b_train.npz: images are 6x6 but .*a_train.npz has 5x6"):
        load_dataset("npz", "train", root=tmp_path)
    with pytest.raises(SslAugError, match="needs root"):
        load_dataset("npz")
    with pytest.raises(SslAugError, match="does not exist"):
        load_dataset("npz", root=tmp_path / "missing")
