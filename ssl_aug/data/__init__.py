"""Data sources -> uint8 image tensors, one registry, plus device-resident batch sources.

Every source returns an `ImageDataset`: images (N, 3, H, W) uint8 on CPU, labels (N,) int64
(-1 = unlabeled), class names. `load_dataset(name, split, root, download, **opts)` dispatches by
name; source modules are imported lazily so `import ssl_aug.data` stays cheap.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from ssl_aug.errors import SslAugError

__all__ = [
    "ImageDataset",
    "DATASETS",
    "SOURCES",
    "DataSource",
    "Source",
    "LazySource",
    "register_source",
    "list_sources",
    "get_source",
    "load_dataset",
    "default_root",
    "cache_root",
    "BatchSource",
    "ShardStream",
    "pack_imagefolder",
    "pack_main",
    "PackReport",
    "balanced_subset",
]


@dataclass
class ImageDataset:
    """A labelled image set held in memory.

    images: (N, 3, H, W) uint8, CPU, contiguous. labels: (N,) int64, -1 for unlabeled.
    classes: class names, index = label. name: e.g. "cifar10/train".
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    name: str
    groups: Optional[torch.Tensor] = None  # (N,) int64 subgroup id per image (ssl_aug.data.groups), or None
    group_names: Optional[list[str]] = None  # names of the subgroup ids

    def __post_init__(self):
        x, y = self.images, self.labels
        if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"ImageDataset.images must be (N,3,H,W) uint8, got {tuple(x.shape)} {x.dtype}")
        if y.dtype != torch.int64 or y.shape != (x.shape[0],):
            raise ValueError(f"ImageDataset.labels must be ({x.shape[0]},) int64, "
                             f"got {tuple(y.shape)} {y.dtype}")
        if not x.is_contiguous():
            self.images = x.contiguous()
        if self.groups is not None:
            from ssl_aug.data.groups import check_groups

            self.groups, self.group_names = check_groups(self.groups, self.group_names, x.shape[0])

    def subset(self, idx: torch.Tensor) -> "ImageDataset":
        """The images at `idx` (LongTensor), keeping labels, groups and names."""
        groups = None if self.groups is None else self.groups[idx]
        return ImageDataset(self.images[idx], self.labels[idx], self.classes, self.name, groups, self.group_names)

    def __len__(self) -> int:
        return self.images.shape[0]

    def class_counts(self) -> torch.Tensor:
        """(C,) int64 number of images per class (unlabeled -1 entries not counted)."""
        y = self.labels[self.labels >= 0]
        return torch.bincount(y, minlength=len(self.classes))


from ssl_aug.data.source import (SOURCES, DataSource, LazySource, Source, get_source, list_sources,  # noqa: E402
                                 register_source)

DATASETS = SOURCES  # the registry of named data sets (data.name); one registration line per source
register_source("cifar10", LazySource("ssl_aug.data.cifar:load_cifar10", ("train", "test"), "ssl_aug.data.npz:split_shards"))
register_source("cifar100", LazySource("ssl_aug.data.cifar:load_cifar100", ("train", "test"),
                                       "ssl_aug.data.npz:split_shards"))
register_source("stl10", LazySource("ssl_aug.data.stl10:load_stl10", ("train", "test", "unlabeled", "train+unlabeled")))
register_source("imagefolder", LazySource("ssl_aug.data.imagefolder:load_imagefolder"))
register_source("npz", LazySource("ssl_aug.data.npz:load_npz", None, "ssl_aug.data.npz:split_shards"))
register_source("embedded", LazySource("ssl_aug.data.embedded:load_embedded"))


def default_root() -> Path:
    """Root for standard data sets: $SSL_AUG_DATA if set, else ~/.cache/ssl_aug."""
    env = os.environ.get("SSL_AUG_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ssl_aug"


def cache_root() -> Path:
    """Writable cache for packed image folders: $SSL_AUG_CACHE if set, else ~/.cache/ssl_aug."""
    env = os.environ.get("SSL_AUG_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ssl_aug"


def _check_root_and_options(name: str, source: Source, root, opts: dict) -> None:
    """One-line errors for a data root that is a file and for options the loader does not take
    (e.g. an embedded-only option left in a recipe switched to cifar10)."""
    if root is not None and name != "embedded":  # embedded's root is only a cache (a file there: no cache)
        path = Path(root).expanduser()
        if path.exists() and not path.is_dir():
            raise SslAugError(f"data root {path} is a file, not a folder; give the folder holding the {name} data")
    allowed = source.options()
    if allowed is not None:
        unknown = sorted(set(opts) - set(allowed))
        if unknown:
            raise SslAugError(f"data.options key {unknown[0]!r} is not an option of data set {name!r}; "
                              f"allowed: {', '.join(allowed) or 'none'}")


def load_dataset(
    name: str, split: str = "train", root: str | os.PathLike | None = None, download: bool = False, **opts
) -> ImageDataset:
    """Load data set `name` (see `list_sources()`) split `split` as an in-memory ImageDataset."""
    source = get_source(name)
    if source.splits is not None and split not in source.splits:
        raise SslAugError(f"unknown split {split!r} for dataset {name!r}; allowed: {', '.join(source.splits)}")
    _check_root_and_options(name, source, root, opts)
    return source.load(split, root, download=download, **opts)


_LAZY = {
    "BatchSource": "ssl_aug.data.batch",
    "ShardStream": "ssl_aug.data.batch",
    "pack_imagefolder": "ssl_aug.data.imagefolder",
    "pack_main": "ssl_aug.data.imagefolder",
    "PackReport": "ssl_aug.data.imagefolder",
    "balanced_subset": "ssl_aug.data.subset",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ssl_aug.data' has no attribute {name!r}")
