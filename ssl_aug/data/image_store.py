"""Images kept out of memory: an `ImageStore` stands where a uint8 (N, 3, H, W) tensor would, and decodes
only the rows a caller asks for.

Indexing by a slice, an index tensor, a bool mask or a list gives another store over those rows without
decoding anything (an int gives that one image, decoded), so subsets and hold-outs cost no pixels;
`decode()` gives the uint8 tensor of its rows; `chunks(batch)` yields them in order, batch by batch,
decoding the next chunk while the caller works on the current one. `pixels(x)`, `image_batches(x, batch)`
and `same_images(a, b)` accept a tensor or a store. The store of a shard pack: ssl_aug.data.shard_eval.ShardImages.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import torch

from ssl_aug.errors import SslAugError

__all__ = ["ImageStore", "pixels", "image_batches", "same_images"]


class ImageStore(ABC):
    """(N, 3, H, W) uint8 images, decoded on demand. Subclasses give `shape`, `take`, `decode` and
    `fingerprint`."""

    dtype = torch.uint8
    ndim = 4
    device = torch.device("cpu")
    shape: torch.Size

    @abstractmethod
    def take(self, rows: torch.Tensor) -> "ImageStore":
        """A store of these rows ((M,) int64 positions in this store), in this order; nothing is decoded."""

    @abstractmethod
    def decode(self) -> torch.Tensor:
        """Every row as one uint8 (N, 3, H, W) CPU tensor."""

    @abstractmethod
    def fingerprint(self) -> str:
        """A hex digest of what the rows are (source, rows, decode settings): the feature-cache key."""

    def __len__(self) -> int:
        return int(self.shape[0])

    def __getitem__(self, key):
        n = len(self)
        if isinstance(key, slice):
            return self.take(torch.arange(n)[key])
        if isinstance(key, int) and not isinstance(key, bool):  # one image, decoded: (3, H, W) uint8
            return self[[key]].decode()[0]
        rows = torch.as_tensor(key)
        if rows.dtype == torch.bool:
            if rows.shape != (n,):
                raise SslAugError(f"bool mask of shape {tuple(rows.shape)} for an ImageStore of {n} images")
            rows = rows.nonzero().squeeze(1)
        rows = rows.long().flatten().cpu()
        if rows.numel() and (int(rows.min()) < -n or int(rows.max()) >= n):
            raise SslAugError(f"row index out of range for an ImageStore of {n} images")
        return self.take(torch.where(rows < 0, rows + n, rows))

    def chunks(self, batch: int) -> Iterator[torch.Tensor]:
        """uint8 (b, 3, H, W) tensors of rows [0, batch), [batch, 2 batch), ... ; the next is decoded while the
        caller uses the current one."""
        n = len(self)
        if n == 0:
            return
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(lambda: self[0:batch].decode())
            for start in range(batch, n + batch, batch):
                current = pending.result()
                if start < n:
                    pending = pool.submit(lambda s=start: self[s:s + batch].decode())
                yield current


def pixels(images) -> torch.Tensor:
    """A uint8 tensor as it is; an ImageStore decoded (memory: N x 3 x H x W bytes)."""
    return images.decode() if isinstance(images, ImageStore) else images


def image_batches(images, batch: int) -> Iterator[torch.Tensor]:
    """uint8 (b, 3, H, W) batches of a tensor (slices) or an ImageStore (decoded, see ImageStore.chunks), in order."""
    if isinstance(images, ImageStore):
        yield from images.chunks(batch)
    else:
        for i in range(0, images.shape[0], batch):
            yield images[i:i + batch]


def same_images(a, b) -> bool:
    """True when a and b hold the same images in the same order (tensors by value, stores by fingerprint)."""
    if a is b:
        return True
    if isinstance(a, ImageStore) or isinstance(b, ImageStore):
        return (isinstance(a, ImageStore) and isinstance(b, ImageStore) and tuple(a.shape) == tuple(b.shape)
                and a.fingerprint() == b.fingerprint())
    return a.shape == b.shape and torch.equal(a, b)
