"""Batch sources: shuffled, rank-sharded, resumable uint8 batches on the training device.

`BatchSource` keeps the whole (N, 3, H, W) uint8 tensor on the device and gathers each batch with
one `index_select`. `ShardStream` serves data larger than memory from npz shards: a per-epoch
shuffled shard order, an in-shard shuffle, the next shard read by a background thread.

Both follow one epoch protocol. The epoch's order comes only from (seed, epoch) through a CPU
`torch.Generator`, so every rank and every resume sees the same order. Each rank takes a disjoint,
equal slice (the tail that does not divide by world_size is dropped so all ranks step together).
`position` counts the batches already handed out; `state_dict()` taken after a batch was yielded
resumes at the next one. After the last batch the state is (epoch, len(self)). `set_epoch(e)` with
a different epoch restarts at position 0; with the current epoch it keeps the position (so a
resumed run can call it as usual). Iterating a finished epoch again without `set_epoch` moves on
to (epoch + 1, 0) rather than repeating its order or yielding nothing.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from ssl_aug.data.datasource import DataSource
from ssl_aug.data.image_store import pixels
from ssl_aug.device import upload
from ssl_aug.errors import SslAugError

_MIX = 0x9E3779B97F4A7C15


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """CPU generator seeded from (seed, epoch); distinct epochs give unrelated streams."""
    return torch.Generator().manual_seed((seed * _MIX + epoch * 0xBF58476D1CE4E5B9 + 1) % (1 << 63))


def _check_common(batch_size, rank, world_size):
    if not isinstance(batch_size, int) or batch_size < 1:
        raise SslAugError(f"batch_size must be a positive integer, got {batch_size!r}")
    ok = isinstance(world_size, int) and isinstance(rank, int) and 0 <= rank < world_size
    if not ok:
        raise SslAugError(f"rank {rank!r} / world_size {world_size!r} invalid; "
                          "allowed 0 <= rank < world_size")


class _Resumable(DataSource):
    """Epoch / position bookkeeping shared by BatchSource and ShardStream."""

    _keys = ("seed", "batch_size", "world_size", "rank", "drop_last", "num_samples")

    def _n_batches(self, n_local: int) -> int:
        return n_local // self.batch_size if self.drop_last else -(-n_local // self.batch_size)

    def _begin(self) -> None:
        if self.position >= len(self):  # finished epoch, no set_epoch: continue with the next one
            self.epoch, self.position = self.epoch + 1, 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (its shuffle); a new epoch starts at position 0."""
        if epoch != self.epoch:
            self.epoch, self.position = int(epoch), 0

    def state_dict(self) -> dict:
        """{"epoch", "position", "seed", "batch_size", "world_size", "rank", "drop_last", "num_samples"}."""
        return {"epoch": self.epoch, "position": self.position, **{k: getattr(self, k) for k in self._keys}}

    def load_state_dict(self, state: dict) -> None:
        """Resume: the next batch is batch `position` of epoch `epoch`."""
        for k in self._keys:
            if k in state and state[k] != getattr(self, k):
                raise SslAugError(f"cannot resume batch source: saved {k}={state[k]!r} but this run has "
                                  f"{k}={getattr(self, k)!r}; allowed: the saved value")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


class BatchSource(_Resumable):
    """Device-resident uint8 batches.

    images: (N, 3, H, W) uint8 (or an ImageDataset); moved to `device` once (default: its device).
    Iterating yields (indices (B,) int64 on device, images (B, 3, H, W) uint8 on device); indices
    refer to rows of `images`. len() = batches per epoch on this rank.
    """

    def __init__(self, images: torch.Tensor, batch_size: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1, drop_last: bool = True, device=None):
        images = pixels(getattr(images, "images", images))  # an ImageStore is decoded: the set lives in memory
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
            got = f"{getattr(images, 'dtype', type(images).__name__)} {tuple(getattr(images, 'shape', ()))}"
            raise SslAugError(f"BatchSource needs (N,3,H,W) uint8 images, got {got}")
        _check_common(batch_size, rank, world_size)
        self.device = torch.device(device) if device is not None else images.device
        self.images = images.to(self.device).contiguous()
        self.num_samples = images.shape[0]
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.drop_last = drop_last
        self.per_rank = self.num_samples // world_size
        self.epoch, self.position = 0, 0

    def __len__(self) -> int:
        return self._n_batches(self.per_rank)

    def epoch_indices(self, epoch: int | None = None) -> torch.Tensor:
        """(per_rank,) int64 CPU: this rank's slice of the epoch's global permutation."""
        g = epoch_generator(self.seed, self.epoch if epoch is None else epoch)
        perm = torch.randperm(self.num_samples, generator=g)
        return perm[self.rank * self.per_rank:(self.rank + 1) * self.per_rank]

    def __iter__(self):
        self._begin()
        idx = upload(self.epoch_indices(), self.device)  # once per epoch, non-blocking
        b = self.batch_size
        for k in range(self.position, len(self)):
            sel = idx[k * b:(k + 1) * b]
            self.position = k + 1
            yield sel, self.images.index_select(0, sel)


class ShardStream(_Resumable):
    """Streaming uint8 batches from npz shards (x (n, H, W, 3) uint8) larger than memory.

    shards: a folder (every *.npz, natural order) or a list of paths. Per epoch the shard order is
    shuffled, each shard's rows are shuffled, and rank r takes rows [r*m, (r+1)*m) of that shuffle
    (m = n // world_size), so ranks see disjoint, equal parts of every shard. Batches run across
    shard boundaries; at most two shards are in memory (current + prefetched). Yields
    (indices (B,) int64 on device, images (B, 3, H, W) uint8 on device), indices into the
    concatenation of the shards in the given order.
    """

    def __init__(self, shards, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 drop_last: bool = True, device=None, prefetch: bool = True):
        from ssl_aug.data.npz import check_x, npz_header, sorted_shards

        if isinstance(shards, (str, Path)):
            folder = Path(shards)
            if not folder.is_dir():
                raise SslAugError(f"shard folder {folder} does not exist; "
                                  "pass a folder of .npz shards or a list")
            shards = sorted_shards(folder.glob("*.npz"))
        self.paths = [Path(p) for p in shards]
        if not self.paths:
            raise SslAugError("ShardStream got no .npz shards; "
                              "pass a folder with *.npz files or a list of paths")
        _check_common(batch_size, rank, world_size)
        sizes = []
        for p in self.paths:
            shape, dtype = npz_header(p)
            check_x(p, shape, dtype)
            if shape[1:] != npz_header(self.paths[0])[0][1:]:
                raise SslAugError(f"{p}: images are {shape[1]}x{shape[2]}, unlike {self.paths[0]}; "
                                  "all shards must share one size")
            sizes.append(shape[0])
        self.sizes = torch.tensor(sizes, dtype=torch.int64)
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.int64), self.sizes.cumsum(0)[:-1]])
        self.num_samples = int(self.sizes.sum())
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.drop_last, self.prefetch = drop_last, prefetch
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.epoch, self.position = 0, 0
        self._side_stream = None  # CUDA: the stream shards are uploaded on (set per iteration)

    def __len__(self) -> int:
        return self._n_batches(int((self.sizes // self.world_size).sum()))

    def epoch_plan(self, epoch: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's epoch order: (shard ids (M,), rows in shard (M,)) int64, grouped by shard."""
        g = epoch_generator(self.seed, self.epoch if epoch is None else epoch)
        order = torch.randperm(len(self.paths), generator=g)
        sids, rows = [], []
        for s in order.tolist():
            n = int(self.sizes[s])
            m = n // self.world_size
            rows.append(torch.randperm(n, generator=g)[self.rank * m:(self.rank + 1) * m])
            sids.append(torch.full((m,), s, dtype=torch.int64))
        return torch.cat(sids), torch.cat(rows)

    def _read(self, s: int) -> tuple[torch.Tensor, object]:
        """Shard s -> ((n, 3, H, W) uint8 contiguous on device, CUDA event or None); runs in the prefetch
        thread. On CUDA the shard is pinned and copied non-blocking on the side stream, and the event
        marks when it is ready: the compute stream waits for it on the device, the host never does."""
        with np.load(self.paths[s], allow_pickle=False) as f:
            host = torch.from_numpy(f["x"])
        stream = self._side_stream
        if stream is None:
            return upload(host, self.device).permute(0, 3, 1, 2).contiguous(), None
        with torch.cuda.stream(stream):
            x = host.pin_memory().to(self.device, non_blocking=True).permute(0, 3, 1, 2).contiguous()
            ready = torch.cuda.Event()
            ready.record(stream)
        return x, ready

    def _ready(self, loaded: tuple[torch.Tensor, object]) -> torch.Tensor:
        """The shard tensor, usable on the current stream (a device-side wait for its side-stream copy)."""
        x, ready = loaded
        if ready is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(ready)
            x.record_stream(current)  # allocated on the side stream, used on this one
        return x

    def __iter__(self):
        self._begin()
        sids, rows = self.epoch_plan()
        n_batches, b = len(self), self.batch_size
        start, stop = self.position * b, min(n_batches * b, len(sids))
        # shards in the order this rank needs them, from the resume point on
        needed = torch.unique_consecutive(sids[start:stop]).tolist() if stop > start else []
        pool = ThreadPoolExecutor(1) if self.prefetch else None
        loaded: dict[int, torch.Tensor] = {}
        pending = {}
        self._side_stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

        def fetch(i):
            if i < len(needed) and needed[i] not in loaded and needed[i] not in pending:
                s = needed[i]
                pending[s] = pool.submit(self._read, s) if pool else None

        def get(s):
            if s not in loaded:
                fut = pending.pop(s, None)
                loaded[s] = self._ready(fut.result() if fut is not None else self._read(s))
            return loaded[s]

        try:
            nxt = 0  # index into `needed` of the next shard to open
            for k in range(self.position, n_batches):
                lo, hi = k * b, min((k + 1) * b, stop)
                bs, br = sids[lo:hi], rows[lo:hi]
                segs = torch.unique_consecutive(bs, return_counts=True)
                # this batch's rows in their shards and its global indices: one non-blocking upload
                packed = upload(torch.cat([br, self.offsets[bs] + br]), self.device)
                rows_d, idx = packed[:hi - lo], packed[hi - lo:]
                parts, j = [], 0
                for s, c in zip(*(t.tolist() for t in segs)):
                    while nxt < len(needed) and needed[nxt] != s:
                        nxt += 1
                    x = get(s)
                    for old in [o for o in loaded if o != s]:
                        del loaded[old]
                    fetch(nxt + 1)
                    parts.append(x.index_select(0, rows_d[j:j + c]))
                    j += c
                images = parts[0] if len(parts) == 1 else torch.cat(parts)
                self.position = k + 1
                yield idx, images
        finally:
            if pool:
                pool.shutdown(wait=True, cancel_futures=True)
