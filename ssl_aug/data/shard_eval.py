"""Evaluation images from a packed shard folder: torchvision's eval transform, decoded in chunks.

`eval_batches(root, size, batch)` yields (ids (B,), labels (B,), images (B, 3, size, size) uint8)
in stored order, each image resized on its shorter side to `resize` (default round(size / 0.875)) and
centre-cropped to size (torchvision `Resize` + `CenterCrop` after a reduced-DCT decode;
ssl_aug.data.crop_decode.decode_eval), decoded by a thread pool: features can be computed chunk by chunk
without the whole set in memory. `ids` selects a subset (e.g. a held-out part).

Data set `shards` (`load_shard_folder`): an ImageDataset whose images are a `ShardImages` store
(ssl_aug.data.image_store): subsets and hold-outs are row lists, features are computed chunk by chunk, and
only an evaluator that needs pixels (invariance, robustness, neighbours, TTA, fine-tuning) decodes the rows
it uses, batch by batch.
"""

from __future__ import annotations

import hashlib
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from ssl_aug.data import ImageDataset
from ssl_aug.data.crop_decode import decode_eval
from ssl_aug.data.image_store import ImageStore
from ssl_aug.data.shard_read import is_shard_folder, iter_rows, read_index
from ssl_aug.errors import SslAugError


def shard_split_root(root, split: str) -> Path:
    """root/<split> when it holds a shard pack (a packed tree with split folders), else root for
    split 'train' / 'all' (a packed plain class tree is split 'train')."""
    root = Path(root).expanduser()
    if is_shard_folder(root / split):
        return root / split
    if split in ("train", "all") and (root / "index.json").is_file():
        return root
    found = [d.name for d in sorted(root.iterdir()) if is_shard_folder(d)] if root.is_dir() else []
    raise SslAugError(f"no shard pack of split {split!r} in {root}; found split folders: {found or 'none'} "
                      "(a packed plain class tree is split 'train')")


def _decode_eval(sample, size: int, resize: int | None) -> torch.Tensor:
    key, data, _, w, h = sample
    try:
        return decode_eval(data, size, resize)
    except Exception as e:  # a corrupt image evaluates as mid-grey, logged (never a crash mid-evaluation)
        print(f"warning: corrupt image {key} evaluated as grey ({' '.join(f'{type(e).__name__}: {e}'.split())})",
              file=sys.stderr)
        return torch.full((3, size, size), 128, dtype=torch.uint8)


def eval_batches(root, size: int = 224, batch: int = 256, ids=None, threads: int | None = None,
                 resize: int | None = None, index=None):
    """(ids (B,) int64, labels (B,) int64, images (B, 3, size, size) uint8) chunks (see module docstring).
    index: root's ShardIndex when already read."""
    index = index or read_index(root)
    ids = np.arange(index.num_samples) if ids is None else np.sort(np.asarray(ids, dtype=np.int64))
    shard = np.searchsorted(index.offsets, ids, side="right") - 1
    threads = threads or min(8, os.cpu_count() or 1)

    def samples():
        for s in np.unique(shard):
            sel = ids[shard == s]
            yield from zip(sel, iter_rows(index.path(int(s)), index.starts[sel], index.ends[sel]))

    with ThreadPoolExecutor(threads) as pool:
        buf = []
        for item in samples():
            buf.append(item)
            if len(buf) == batch:
                yield _chunk(buf, size, resize, pool, index)
                buf = []
        if buf:
            yield _chunk(buf, size, resize, pool, index)


def _chunk(buf, size, resize, pool, index):
    ids = torch.tensor([int(i) for i, _ in buf], dtype=torch.int64)
    images = torch.stack(list(pool.map(lambda it: _decode_eval(it[1], size, resize), buf))).contiguous()
    return ids, torch.from_numpy(index.labels[ids.numpy()]), images


class ShardImages(ImageStore):
    """The eval view (shorter side `resize`, centre crop `size`) of rows `rows` of a shard pack, as an ImageStore:
    (len(rows), 3, size, size) uint8, decoded on demand by eval_batches."""

    def __init__(self, folder, size: int, resize: int | None = None, rows: np.ndarray | None = None):
        self.folder, self.size_px, self.resize = Path(folder), int(size), resize
        self.index = read_index(self.folder)
        self.rows = np.arange(self.index.num_samples, dtype=np.int64) if rows is None else np.asarray(rows, np.int64)
        self.shape = torch.Size((len(self.rows), 3, self.size_px, self.size_px))

    def take(self, rows: torch.Tensor) -> "ShardImages":
        store = object.__new__(ShardImages)
        store.__dict__.update(self.__dict__)
        store.rows = self.rows[rows.numpy()]
        store.shape = torch.Size((len(store.rows), 3, self.size_px, self.size_px))
        return store

    def decode(self) -> torch.Tensor:
        out = torch.empty(tuple(self.shape), dtype=torch.uint8)
        order = torch.from_numpy(np.argsort(self.rows, kind="stable"))  # eval_batches yields rows sorted
        done = 0
        for _, _, x in eval_batches(self.folder, self.size_px, ids=self.rows, resize=self.resize, index=self.index):
            out[order[done:done + len(x)]] = x
            done += len(x)
        return out

    def fingerprint(self) -> str:
        h = hashlib.sha256((self.folder / "index.json").read_bytes())
        h.update(f"|{self.size_px}|{self.resize}|".encode())
        h.update(self.rows.tobytes())
        return h.hexdigest()


def load_shard_folder(split: str, root, download: bool = False, size: int = 224, workers: int = 2,
                      shuffle_buffer: int = 512, decode: str = "auto", eval_resize: int | None = None) -> ImageDataset:
    """Tar shards of encoded images (`ssl-aug data pack --format shards`): training streams crops.

    Loaded, root[/split] gives the eval view of every image as a ShardImages store (decoded on demand):
    shorter side resized to eval_resize (default round(size / 0.875); = size keeps the whole shorter side,
    as the in-memory image-folder pack does), centre crop size. workers, shuffle_buffer and decode are
    options of the streaming source, unused here."""
    if root is None:
        raise SslAugError("dataset 'shards' needs root=<folder packed by `ssl-aug data pack --format shards`> "
                          "(recipe data.root=..., CLI --root)")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise SslAugError(f"data.options.size = {size!r} is not allowed; use an integer >= 1 (eval image side)")
    if eval_resize is not None and (isinstance(eval_resize, bool) or not isinstance(eval_resize, int)
                                    or eval_resize < size):
        raise SslAugError(f"data.options.eval_resize = {eval_resize!r} is not allowed; use an integer >= "
                          f"data.options.size ({size}): the shorter side before the centre crop")
    images = ShardImages(shard_split_root(root, split), size, eval_resize)
    index = images.index
    return ImageDataset(images, torch.from_numpy(index.labels.copy()), index.classes, f"shards/{split}")
