"""STL-10 (96 px) from torchvision's on-disk layout `stl10_binary/`, parsed here.

Format (as torchvision reads it): <split>_X.bin raw uint8, each image 3x96x96 stored column-major
(so each channel is transposed), <split>_y.bin uint8 labels 1..10, class_names.txt, and
fold_indices.txt (10 lines of train indices). Splits: train (5,000), test (8,000), unlabeled
(100,000, label -1), train+unlabeled. Looked up in root and root/stl10; download=True downloads
through torchvision.datasets.STL10.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ssl_aug.data import ImageDataset, default_root
from ssl_aug.errors import SslAugError

FOLDER = "stl10_binary"
IMAGE_BYTES = 3 * 96 * 96
STL10_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]


def read_stl_images(path: Path, chunk: int = 4096) -> torch.Tensor:
    """<split>_X.bin -> (N, 3, 96, 96) uint8, copied in chunks (peak memory ~ one copy of the data)."""
    if not path.is_file():
        raise SslAugError(f"missing STL-10 file {path}; re-download with data.download = true in the recipe "
                          "(or `ssl-aug data info stl10 --download`)")
    size = path.stat().st_size
    if size == 0 or size % IMAGE_BYTES:
        raise SslAugError(f"{path}: {size} bytes is not a multiple of one 3x96x96 image "
                          f"({IMAGE_BYTES} bytes)")
    raw = np.memmap(path, dtype=np.uint8, mode="c", shape=(size // IMAGE_BYTES, 3, 96, 96))
    out = torch.empty(raw.shape, dtype=torch.uint8)
    for i in range(0, len(raw), chunk):  # column-major on disk: swap H and W
        out[i:i + chunk].copy_(torch.from_numpy(raw[i:i + chunk]).transpose(2, 3))
    del raw
    return out


def read_stl_labels(path: Path, n: int) -> torch.Tensor:
    """<split>_y.bin (labels 1..10) -> (N,) int64 in 0..9."""
    if not path.is_file():
        raise SslAugError(f"missing STL-10 file {path}; re-download with data.download = true in the recipe "
                          "(or `ssl-aug data info stl10 --download`)")
    y = np.fromfile(path, dtype=np.uint8).astype(np.int64) - 1
    if len(y) != n:
        raise SslAugError(f"{path}: {len(y)} labels for {n} images")
    if len(y) and (y.min() < 0 or y.max() > 9):
        raise SslAugError(f"{path}: labels span {y.min() + 1}..{y.max() + 1}; allowed 1..10")
    return torch.from_numpy(y)


def _find(base: Path) -> Path | None:
    for folder in (base, base / "stl10"):
        if (folder / FOLDER).is_dir():
            return folder / FOLDER
    return None


def load_stl10(split: str, root=None, download: bool = False, fold: int | None = None) -> ImageDataset:
    """STL-10 split train / test / unlabeled / train+unlabeled -> (N, 3, 96, 96) uint8.

    fold: 0..9 selects the official 1,000-image training fold (train splits only)."""
    base = Path(root).expanduser() if root is not None else default_root()
    folder = _find(base)
    if folder is None:
        if not download:
            where = f"{base} and {base / 'stl10'}"
            raise SslAugError(f"stl10 {split} not found: looked for {FOLDER}/ in {where}; pass data.download=true "
                              "(2.6 GB; or `ssl-aug data info stl10 --download`) or data.root=<folder> "
                              "(ssl-aug eval: --root)")
        _download(base)
        folder = base / FOLDER
    parts, labels = [], []
    for part in split.split("+"):
        x = read_stl_images(folder / f"{part}_X.bin")
        if part == "unlabeled":
            y = torch.full((len(x),), -1, dtype=torch.int64)
        else:
            y = read_stl_labels(folder / f"{part}_y.bin", len(x))
            if fold is not None and part == "train":
                idx = _fold_indices(folder, fold, len(x))
                x, y = x[idx], y[idx]
        parts.append(x)
        labels.append(y)
    images = parts[0] if len(parts) == 1 else torch.cat(parts)
    names_file = folder / "class_names.txt"
    classes = [ln.strip() for ln in names_file.read_text().splitlines() if ln.strip()] \
        if names_file.is_file() else STL10_CLASSES
    return ImageDataset(images, torch.cat(labels), classes, f"stl10/{split}")


def _fold_indices(folder: Path, fold: int, n: int) -> torch.Tensor:
    path = folder / "fold_indices.txt"
    lines = path.read_text().splitlines() if path.is_file() else []
    if not 0 <= fold < len(lines):
        raise SslAugError(f"stl10 fold {fold} not available ({path} has {len(lines)} folds); allowed 0..9")
    idx = torch.tensor([int(t) for t in lines[fold].split()], dtype=torch.int64)
    if len(idx) and (idx.min() < 0 or idx.max() >= n):
        raise SslAugError(f"{path}: fold {fold} indexes beyond the {n} training images")
    return idx


def _download(root: Path) -> None:
    import torchvision

    try:
        root.mkdir(parents=True, exist_ok=True)
        torchvision.datasets.STL10(str(root), split="test", download=True)
    except Exception as e:
        raise SslAugError(f"downloading stl10 into {root} failed ({type(e).__name__}: {e}); "
                          f"place {FOLDER}/ there and pass root=")
