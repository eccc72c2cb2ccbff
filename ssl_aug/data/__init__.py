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

    images: (N, 3, H, W) uint8, CPU, contiguous, or an ImageStore (ssl_aug.data.image_store) standing for one
    (images decoded on demand, e.g. a shard pack). labels: (N,) int64, -1 for unlabeled.
    classes: class names, index = label. name: e.g. "cifar10/train".
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    name: str
    groups: Optional[torch.Tensor] = None  # (N,) int64 subgroup id per image (ssl_aug.data.groups), or None
    group_names: Optional[list[str]] = None  # names of the subgroup ids

    def __post_init__(self):
        from ssl_aug.data.image_store import ImageStore

        x, y = self.images, self.labels
        store = isinstance(x, ImageStore)
        if not store and (x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3):
            raise ValueError(f"ImageDataset.images must be (N,3,H,W) uint8, got {tuple(x.shape)} {x.dtype}")
        if y.dtype != torch.int64 or y.shape != (x.shape[0],):
            raise ValueError(f"ImageDataset.labels must be ({x.shape[0]},) int64, "
                             f"got {tuple(y.shape)} {y.dtype}")
        if not store and not x.is_contiguous():
            self.images = x.contiguous()
        if self.groups is not None:
            from ssl_aug.data.groups import check_groups

            self.groups, self.group_names = check_groups(self.groups, self.group_names, x.shape[0])

    def subset(self, idx, seed: int = 0) -> "ImageDataset":
        """A subset keeping labels, groups and names.

        idx: an int count -> a seeded, class-balanced subset of that many images (seed 0 by default: the
        images recipes pick with ``data.subset``; the whole set when the count is not smaller than it), or
        an index tensor (N',) int64 / bool mask -> those images.
        """
        if isinstance(idx, bool) or not isinstance(idx, (int, torch.Tensor)):
            raise SslAugError(f"subset takes an image count or an index tensor, got {type(idx).__name__}")
        if isinstance(idx, int):
            if idx < 1:
                raise SslAugError(f"subset={idx} is not allowed: give a number of images >= 1")
            if idx >= len(self):
                return self
            from ssl_aug.data.subset import balanced_subset

            idx = balanced_subset(self.labels, idx, seed=seed)
        groups = None if self.groups is None else self.groups[idx]
        return ImageDataset(self.images[idx], self.labels[idx], self.classes, self.name, groups, self.group_names)

    def __len__(self) -> int:
        return self.images.shape[0]

    def decoded(self) -> "ImageDataset":
        """This set with its images as one uint8 tensor (an ImageStore is decoded: N x 3 x H x W bytes)."""
        from ssl_aug.data.image_store import pixels

        if isinstance(self.images, torch.Tensor):
            return self
        return ImageDataset(pixels(self.images), self.labels, self.classes, self.name, self.groups, self.group_names)

    def class_counts(self) -> torch.Tensor:
        """(C,) int64 number of images per class (unlabeled -1 entries not counted)."""
        y = self.labels[self.labels >= 0]
        return torch.bincount(y, minlength=len(self.classes))


from ssl_aug.data.datasource import DataSource  # noqa: E402
from ssl_aug.data.source import (SOURCES, LazySource, Source, get_source, list_sources,  # noqa: E402
                                 register_source)

DATASETS = SOURCES  # the registry of named data sets (data.name); one registration line per source
register_source("cifar10", LazySource("ssl_aug.data.cifar:load_cifar10", ("train", "test"), "ssl_aug.data.npz:split_shards"))
register_source("cifar100", LazySource("ssl_aug.data.cifar:load_cifar100", ("train", "test"),
                                       "ssl_aug.data.npz:split_shards"))
register_source("stl10", LazySource("ssl_aug.data.stl10:load_stl10", ("train", "test", "unlabeled", "train+unlabeled")))
register_source("imagefolder", LazySource("ssl_aug.data.imagefolder:load_imagefolder"))
register_source("npz", LazySource("ssl_aug.data.npz:load_npz", None, "ssl_aug.data.npz:split_shards"))
register_source("embedded", LazySource("ssl_aug.data.embedded:load_embedded"))
register_source("shards", LazySource("ssl_aug.data.shard_eval:load_shard_folder"))  # trains via ShardCropSource


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
    name: str, split: str = "train", root: str | os.PathLike | None = None, download: bool = False,
    subset: int = 0, **opts
) -> ImageDataset:
    """Load data set `name` (see `list_sources()`) split `split` as an in-memory ImageDataset.

    The arguments are the recipe's ``[data]`` keys: `root`, `download`, `subset` (> 0: a fixed, seed-0,
    class-balanced subset of that many images, as ``data.subset`` picks for training) and the data set's
    options (``data.options``, e.g. ``n_per_class`` for ``embedded``) as keywords.

    Example:
        >>> train = load_dataset("embedded", "train", subset=2000)   # uint8 (2000, 3, 20, 20)
    """
    if isinstance(subset, bool) or not isinstance(subset, int) or subset < 0:
        raise SslAugError(f"subset={subset!r} is not allowed: give a number of images (0 = all)")
    source = get_source(name)
    if source.splits is not None and split not in source.splits:
        raise SslAugError(f"unknown split {split!r} for dataset {name!r}; allowed: {', '.join(source.splits)}")
    _check_root_and_options(name, source, root, opts)
    dataset = source.load(split, root, download=download, **opts)
    return dataset.subset(subset) if subset else dataset


_LAZY = {
    "BatchSource": "ssl_aug.data.batch",
    "ShardStream": "ssl_aug.data.batch",
    "pack_imagefolder": "ssl_aug.data.imagefolder",
    "pack_main": "ssl_aug.data.pack_command",
    "PackReport": "ssl_aug.data.imagefolder",
    "balanced_subset": "ssl_aug.data.subset",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ssl_aug.data' has no attribute {name!r}")
