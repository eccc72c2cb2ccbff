"""Folders of npz shards: arrays x (N, H, W, 3) uint8 and optional y (N,) integer labels.

Validation is strict and names the file: wrong x shape/dtype, y length/dtype, labels out of range
or mismatched image sizes across shards raise `SslAugError`. Class names come from `classes.txt`
(one per line) or `meta.json` ({"classes": [...]}) next to the shards, else "0", "1", ...
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import numpy as np
import torch

from ssl_aug.data import ImageDataset
from ssl_aug.errors import SslAugError

SPLIT_WORDS = ("train", "test", "val", "valid", "validation", "unlabeled")


def _natural_key(path: Path):
    """Sort key so that shard_2 < shard_10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def sorted_shards(paths) -> list[Path]:
    """Paths sorted in natural order (shard_2 before shard_10)."""
    return sorted((Path(p) for p in paths), key=_natural_key)


def npz_header(path: Path, key: str = "x") -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of array `key` in an npz file without reading its data."""
    try:
        with zipfile.ZipFile(path) as z, z.open(f"{key}.npy") as f:
            fmt = np.lib.format
            version = fmt.read_magic(f)
            read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, _, dtype = read(f)
    except KeyError:
        raise SslAugError(f"{path}: no array {key!r} in npz file; "
                          "expected arrays x (N,H,W,3) uint8 and y (N,)")
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise SslAugError(f"{path}: not a readable npz file ({e})")
    return shape, dtype


def check_x(path, shape, dtype) -> None:
    """Raise SslAugError unless x is (N, H, W, 3) uint8."""
    if len(shape) != 4 or shape[3] != 3 or dtype != np.uint8:
        raise SslAugError(f"{path}: x has shape {tuple(shape)} dtype {dtype}; expected (N,H,W,3) uint8")


def read_shard(path, num_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read and validate one shard -> x (N, H, W, 3) uint8, y (N,) int64 (-1 where y is absent)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            if "x" not in f.files:
                raise SslAugError(f"{path}: no array 'x' (found {', '.join(f.files) or 'none'}); "
                                  "expected x (N,H,W,3) uint8 and y (N,)")
            x = f["x"]
            y = f["y"] if "y" in f.files else None
    except SslAugError:
        raise
    except Exception as e:  # zip/pickle/format errors: one line naming the file
        raise SslAugError(f"{path}: not a readable npz file ({type(e).__name__}: {e})")
    check_x(path, x.shape, x.dtype)
    if y is None:
        return x, np.full(x.shape[0], -1, dtype=np.int64)
    if y.ndim != 1 or y.shape[0] != x.shape[0] or not np.issubdtype(y.dtype, np.integer):
        raise SslAugError(f"{path}: y has shape {y.shape} dtype {y.dtype}; expected ({x.shape[0]},) integer")
    y = y.astype(np.int64)
    if y.size:
        lo, hi = int(y.min()), int(y.max())
        top = "num_classes-1" if num_classes is None else str(num_classes - 1)
        if lo < -1 or (num_classes is not None and hi >= num_classes):
            raise SslAugError(f"{path}: labels span {lo}..{hi}; allowed -1 (unlabeled) or 0..{top}")
    return x, y


def read_classes(folder: Path) -> list[str] | None:
    """Class names from folder/classes.txt or folder/meta.json, or None."""
    txt, meta = folder / "classes.txt", folder / "meta.json"
    if txt.is_file():
        return [ln.strip() for ln in txt.read_text().splitlines() if ln.strip()]
    if meta.is_file():
        try:
            classes = json.loads(meta.read_text()).get("classes")
        except (ValueError, AttributeError) as e:
            raise SslAugError(f"{meta}: not a JSON object with a 'classes' list ({e})")
        if classes is not None:
            return [str(c) for c in classes]
    return None


def load_shards(paths, name: str, classes: list[str] | None = None) -> ImageDataset:
    """Concatenate validated shards (in the given order) into an ImageDataset (N, 3, H, W)."""
    paths = list(paths)
    num_classes = None if classes is None else len(classes)
    xs, ys = [], []
    for p in paths:
        x, y = read_shard(p, num_classes)
        if xs and x.shape[1:] != xs[0].shape[1:]:
            raise SslAugError(f"{p}: images are {x.shape[1]}x{x.shape[2]} but {paths[0]} has "
                              f"{xs[0].shape[1]}x{xs[0].shape[2]}; all shards must share one size")
        xs.append(x)
        ys.append(y)
    n = sum(len(x) for x in xs)
    h, w = xs[0].shape[1:3]
    images = torch.empty((n, 3, h, w), dtype=torch.uint8)
    i = 0
    for x in xs:  # HWC -> CHW copy per shard, no full-size intermediate
        images[i:i + len(x)].copy_(torch.from_numpy(x).permute(0, 3, 1, 2))
        i += len(x)
    labels = torch.from_numpy(np.concatenate(ys))
    if classes is None:
        classes = [str(c) for c in range(int(labels.max()) + 1 if n else 0)]
    return ImageDataset(images, labels, classes, name)


def _split_of(path: Path) -> str | None:
    tokens = re.split(r"[_\-.\s]+", path.stem.lower())
    return next((t for t in tokens if t in SPLIT_WORDS), None)


def _packed_shards(folder: Path) -> list[Path] | None:
    """The shards listed by a `ssl-aug data pack` meta.json in folder, or None."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("format") != "ssl_aug.imagefolder":
        return None
    return [folder / str(name) for name in meta.get("shards") or []]


def find_split_shards(folder: Path, split: str) -> list[Path]:
    """Shards of `split` in folder: folder/<split>/*.npz, else files whose name holds the split word
    (cifar10_train_1.npz, test.npz), else for split 'all' every *.npz in folder."""
    sub = folder / split
    if sub.is_dir():
        return sorted_shards(sub.glob("*.npz"))
    packed = _packed_shards(folder)
    if packed is not None and split in ("train", "all"):  # `ssl-aug data pack` of a class tree: split 'train'
        return packed
    files = sorted_shards(folder.glob("*.npz"))
    if split == "all":
        return files
    return [p for p in files if _split_of(p) == split]


def load_npz(split: str, root, download: bool = False, classes: list[str] | None = None) -> ImageDataset:
    """Data set `npz`: shards of `split` in folder `root` (see find_split_shards)."""
    if root is None:
        raise SslAugError("dataset 'npz' needs root=<folder of .npz shards> (recipe data.root=..., CLI --root)")
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise SslAugError(f"npz folder {folder} does not exist; "
                          "pass a folder of .npz shards with arrays x, y")
    paths = find_split_shards(folder, split)
    if not paths and _packed_shards(folder) is not None:
        raise SslAugError(f"{folder} is a packed image folder: its one split is 'train', not {split!r}; "
                          "evaluate on a held-out part of it with eval.test_split = \"train\"")
    if not paths:
        found = sorted(p.name for p in folder.glob("*.npz"))[:5]
        raise SslAugError(f"no .npz shards for split {split!r} in {folder} "
                          f"(looked for {folder / split}/*.npz and *{split}*.npz; found {found or 'none'}); "
                          "use split='all' for every shard")
    if classes is None:
        classes = read_classes(paths[0].parent) or read_classes(folder)
    return load_shards(paths, f"npz/{split}", classes)


def split_shards(name: str, root: Path | None, split: str) -> list[Path]:
    """The npz shards `data.stream` reads: data set `npz` (shards of `split` in `root`) or cifar10 /
    cifar100 stored as <name>_<split>*.npz shards (in root, root/<name>, or the default data root)."""
    from ssl_aug.data import default_root

    if name == "npz":
        if root is None or not root.is_dir():
            raise SslAugError(f"data.stream with data.name = 'npz' needs data.root = a folder of .npz shards, got {root}")
        shards = find_split_shards(root, split)
    else:
        base = root or default_root()
        shards = next((found for folder in (base, base / name)
                       if (found := sorted_shards(folder.glob(f"{name}_{split}*.npz")))), [])
    if not shards:
        raise SslAugError(f"data.stream found no .npz shards of split {split!r} for data set {name!r} "
                          f"(root {root or default_root()})")
    return shards
