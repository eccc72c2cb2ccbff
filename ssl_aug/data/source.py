"""The data-source contract: what the trainer, the evaluator and the search consume, and the registry of
named data sets (`SOURCES`) that recipes pick with `data.name`.

A **batch source** (`DataSource`) hands out shuffled, rank-sharded, resumable uint8 batches on the
training device. A **registered source** (`Source`) says how a named data set opens: `load` gives a
split in memory (evaluation, and training when it fits), `batches` gives the training `DataSource`
(by default the in-memory `BatchSource`; `stream` when `data.stream = true`).

A new data set is one file defining a `Source` subclass plus one `register_source("name", ...)` line:

>>> class Toy(Source):
...     splits = ("train", "test")
...     def load(self, split, root=None, download=False, **opts):
...         return ImageDataset(torch.zeros(8, 3, 4, 4, dtype=torch.uint8), torch.arange(8) % 2, ["a", "b"], "toy")
>>> _ = register_source("toy", Toy())
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

from ssl_aug.data.batch import BatchSource, ShardStream
from ssl_aug.data.datasource import DataSource
from ssl_aug.errors import SslAugError
from ssl_aug.registry import Registry

__all__ = ["DataSource", "Source", "LazySource", "SOURCES", "register_source", "list_sources", "get_source"]


class Source:
    """A named data set. `splits`: the split names it knows (None: any, checked by the loader)."""

    splits: tuple[str, ...] | None = None

    def load(self, split: str, root=None, download: bool = False, **opts):
        """split -> ImageDataset (images (N,3,H,W) uint8 on CPU, labels (N,) int64)."""
        raise SslAugError(f"data set {self.name!r} cannot be loaded into memory; use data.stream = true")

    def options(self) -> list[str] | None:
        """The data.options keys `load` takes (None: any)."""
        params = inspect.signature(self.load).parameters
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return None
        return [k for k in params if k not in ("split", "root", "download")]

    def stream(self, data, *, split: str, batch_size: int, seed: int, rank: int, world_size: int,
               device) -> DataSource:
        """data.stream = true: batches read from storage without holding the set in memory."""
        allowed = ", ".join(n for n, s in SOURCES.items() if type(s).stream is not Source.stream)
        raise SslAugError(f"data.stream = true is not supported for data.name = {self.name!r}; allowed: {allowed} "
                          "(pack an image folder with `ssl-aug data pack`, then use data.name = 'npz')")

    def batches(self, data, dataset=None, *, split: str, batch_size: int, seed: int, rank: int, world_size: int,
                device) -> DataSource:
        """The training batches: `stream` when data.stream is set, else a device-resident BatchSource over
        `dataset` (the loaded split)."""
        if getattr(data, "stream", False):
            return self.stream(data, split=split, batch_size=batch_size, seed=seed, rank=rank,
                               world_size=world_size, device=device)
        return BatchSource(dataset.images, batch_size=batch_size, seed=seed, rank=rank, world_size=world_size,
                           drop_last=True, device=device)

    def describe(self) -> str:
        """One line for `ssl-aug list sources` (the first line of the class docstring)."""
        return (type(self).__doc__ or "").strip().split("\n")[0]

    @property
    def name(self) -> str:
        return next((n for n, s in SOURCES.items() if s is self), type(self).__name__)


class LazySource(Source):
    """A built-in source whose loader `module:function` is imported on first use (keeps `import
    ssl_aug.data` cheap). The loader is called as fn(split, root, download=..., **opts)."""

    def __init__(self, target: str, splits: tuple[str, ...] | None = None, shards: str | None = None):
        self.target, self.splits, self.shards = target, splits, shards

    def _fn(self, target: str):
        module, fn = target.split(":")
        return getattr(importlib.import_module(module), fn)

    def load(self, split: str, root=None, download: bool = False, **opts):
        fn = self._fn(self.target)
        if "download" in inspect.signature(fn).parameters:
            opts["download"] = download
        return fn(split, root=root, **opts)

    def describe(self) -> str:
        lines = (self._fn(self.target).__doc__ or "").strip().split("\n")
        return lines[0] + (" (streams with data.stream)" if self.shards else "")

    def options(self) -> list[str] | None:
        params = inspect.signature(self._fn(self.target)).parameters
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return None
        return [k for k in params if k not in ("split", "root", "download")]

    def stream(self, data, *, split, batch_size, seed, rank, world_size, device) -> DataSource:
        if self.shards is None:
            return super().stream(data, split=split, batch_size=batch_size, seed=seed, rank=rank,
                                  world_size=world_size, device=device)
        paths = self._fn(self.shards)(self.name, Path(data.root).expanduser() if data.root else None, split)
        return ShardStream(paths, batch_size=batch_size, seed=seed, rank=rank, world_size=world_size,
                           drop_last=True, device=device)


SOURCES = Registry("data set")


def register_source(name: str, source: Source | None = None):
    """Register a Source instance under `name` (direct, or as a decorator on a Source subclass)."""
    def add(item):
        instance = item() if isinstance(item, type) else item
        if not isinstance(instance, Source):
            raise TypeError(f"register_source({name!r}) expects a Source, got {item!r}")
        SOURCES.register(name, instance, replace=True)
        return item
    return add if source is None else add(source)


def list_sources() -> list[str]:
    return SOURCES.names()


def get_source(name: str) -> Source:
    return SOURCES.get(name)
