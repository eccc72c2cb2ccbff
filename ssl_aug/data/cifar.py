"""CIFAR-10 / CIFAR-100 from npz shards or torchvision's on-disk layout (download via torchvision).

Lookup, for each folder F in (root, root/<name>) with root defaulting to $SSL_AUG_DATA or
~/.cache/ssl_aug: (a) npz shards F/<name>_<split>*.npz (x (N,32,32,3) uint8, y); (b) torchvision's
pickles F/cifar-10-batches-py or F/cifar-100-python, parsed here (torchvision's loader insists on
md5 checksums, so local copies are read directly in the same format). With download=True and no
local copy, torchvision downloads (and verifies) into root, then the pickles are parsed.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from ssl_aug.data import ImageDataset, default_root
from ssl_aug.data.npz import load_shards, read_classes, sorted_shards
from ssl_aug.errors import SslAugError

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

_LAYOUT = {
    "cifar10": dict(folder="cifar-10-batches-py", train=[f"data_batch_{i}" for i in range(1, 6)],
                    test=["test_batch"], meta="batches.meta", tv="CIFAR10"),
    "cifar100": dict(folder="cifar-100-python", train=["train"], test=["test"], meta="meta", tv="CIFAR100"),
}


def read_cifar_pickles(folder: Path, files: list[str], label_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Parse CIFAR python batches (dict with 'data' (n, 3072) uint8 CHW rows and labels) ->
    images (N, 3, 32, 32) uint8, labels (N,) int64."""
    xs, ys = [], []
    for name in files:
        path = folder / name
        if not path.is_file():
            raise SslAugError(f"missing CIFAR batch file {path}; re-download with data.download = true in the recipe "
                              "(or `ssl-aug data info cifar10 --download`, cifar100 alike)")
        try:
            with open(path, "rb") as f:
                d = pickle.load(f, encoding="latin1")
            x = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            y = np.asarray(d[label_key], dtype=np.int64)
        except Exception as e:
            raise SslAugError(f"{path}: not a CIFAR python batch ({type(e).__name__}: {e})")
        if len(y) != len(x):
            raise SslAugError(f"{path}: {len(x)} images but {len(y)} labels")
        xs.append(x)
        ys.append(y)
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


def _meta_names(folder: Path, meta: str, key: str) -> list[str]:
    with open(folder / meta, "rb") as f:
        return list(pickle.load(f, encoding="latin1")[key])


def _load(name: str, split: str, root, download: bool, label_type: str = "fine") -> ImageDataset:
    if label_type not in ("fine", "coarse"):
        raise SslAugError(f"unknown label_type {label_type!r} for {name}; allowed: fine, coarse")
    lay = _LAYOUT[name]
    base = Path(root).expanduser() if root is not None else default_root()
    label_key = "labels" if name == "cifar10" else f"{label_type}_labels"
    meta_key = "label_names" if name == "cifar10" else f"{label_type}_label_names"
    for folder in (base, base / name):
        shards = sorted_shards(folder.glob(f"{name}_{split}*.npz"))
        if shards:
            if label_type == "coarse":
                raise SslAugError(f"label_type 'coarse' needs the cifar-100-python pickles; "
                                  f"{folder} has npz shards")
            classes = read_classes(folder) or (CIFAR10_CLASSES if name == "cifar10" else None)
            return load_shards(shards, f"{name}/{split}", classes)
        if (folder / lay["folder"]).is_dir():
            break
    else:
        folder = base
        if not download:
            raise SslAugError(
                f"{name} {split} not found: looked for {name}_{split}*.npz and {lay['folder']}/ "
                f"in {base} and {base / name}; pass data.download=true (or `ssl-aug data info {name} --download`) "
                "or data.root=<folder> (ssl-aug eval: --root)")
        _download(name, base, split)
    pk = folder / lay["folder"]
    images, labels = read_cifar_pickles(pk, lay[split], label_key)
    classes = _meta_names(pk, lay["meta"], meta_key) if (pk / lay["meta"]).is_file() else None
    if classes is None:
        classes = CIFAR10_CLASSES if name == "cifar10" else [str(i) for i in range(int(labels.max()) + 1)]
    if int(labels.min()) < 0 or int(labels.max()) >= len(classes):
        raise SslAugError(f"{pk}: labels span {int(labels.min())}..{int(labels.max())}; "
                          f"allowed 0..{len(classes) - 1}")
    return ImageDataset(images, labels, classes, f"{name}/{split}")


def _download(name: str, root: Path, split: str) -> None:
    import torchvision

    cls = getattr(torchvision.datasets, _LAYOUT[name]["tv"])
    try:
        root.mkdir(parents=True, exist_ok=True)
        cls(str(root), train=split == "train", download=True)
    except Exception as e:
        raise SslAugError(f"downloading {name} into {root} failed ({type(e).__name__}: {e}); "
                          f"place {_LAYOUT[name]['folder']}/ or {name}_{split}*.npz there and pass root=")


def load_cifar10(split: str, root=None, download: bool = False) -> ImageDataset:
    """CIFAR-10 split 'train' (50,000) or 'test' (10,000): images (N, 3, 32, 32) uint8."""
    return _load("cifar10", split, root, download)


def load_cifar100(split: str, root=None, download: bool = False, label_type: str = "fine") -> ImageDataset:
    """CIFAR-100 split 'train' / 'test'; label_type 'fine' (100 classes) or 'coarse' (20)."""
    return _load("cifar100", split, root, download, label_type)
