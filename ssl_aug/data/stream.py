"""`ShardCropSource`: per-view random-resized crops streamed from tar shards by DataLoader workers.

Epoch plan (a pure function of seed and epoch, so every rank and every resume agrees): the shard
order is shuffled, the shards' images are laid end to end, and rank r takes the r-th of
`world_size` equal contiguous parts (the tail that does not divide is dropped), so ranks read
disjoint images and every rank runs `len(self)` = part // batch_size steps. Within a rank, batch k
comes from worker k % workers, and each worker reads one contiguous stretch of the rank's part
(seeking to each sample's byte range recorded in the index), passes it through a shuffle buffer of
`shuffle_buffer` encoded images, and decodes each image once into all its views' crops
(ssl_aug.data.crop_decode). Host memory is bounded by workers x (buffer + prefetched batches),
independent of the data set's size (plus 16 bytes per image of index). Once the workers hold every
remaining batch of an epoch, the next epoch's workers start, so their start-up and shuffle-buffer
fill overlap the epoch's tail instead of stalling the training step (briefly 2 x workers processes).

Resume: `position` counts batches handed out; the worker that owns batch `position` starts first
and every worker discards (without decoding) the batches of its stream that were already handed
out, so a resumed epoch continues with exactly the next image. A corrupt image met while
streaming is counted, logged and replaced by another image of the same batch (the batch keeps its
size; the order of every later batch is unchanged).

Yields (indices (B,) int64, crops) with crops a list of V uint8 tensors (B, 3, s_v, s_v), one per
view of the crop plan, on `device`: the view engine makes the rest of each view from them
(ssl_aug.augment.crop_views). With decode="device" the workers only read and shuffle; the batch
is decoded on the device (nvjpeg on CUDA) and cropped there, one batch ahead in a background thread of
the training process; a batch's encoded bytes cross from the worker as one shared-memory uint8 tensor
(not B pickled byte strings).
"""

from __future__ import annotations

import multiprocessing.util
import sys
import weakref
from types import SimpleNamespace

import numpy as np
import torch

from ssl_aug.data.batch import _check_common, _Resumable, epoch_generator
from ssl_aug.data.crop_decode import crop_plan, decode_crops, decode_crops_device, image_generator, sample_boxes_batch
from ssl_aug.data.shard_read import iter_rows, read_index
from ssl_aug.errors import SslAugError

DECODES = ("auto", "cpu", "device")


def _stop_workers(loader_ref) -> None:
    """Finaliser of a loader started ahead: it holds only a weak reference, so that forked children, whose
    copy of the finaliser registry multiprocessing clears, do not drop the loader's last reference and run
    its shutdown (which signals the parent's workers) from the wrong process."""
    loader_iter = loader_ref()
    if loader_iter is not None and hasattr(loader_iter, "_shutdown_workers"):  # a multi-process DataLoader iterator
        loader_iter._shutdown_workers()


def epoch_order(index, seed: int, epoch: int) -> np.ndarray:
    """(N,) int64 global image ids: shards in a seeded order per epoch, each shard's images in stored order."""
    order = torch.randperm(len(index.names), generator=epoch_generator(seed, epoch)).numpy()
    return np.concatenate([index.offsets[s] + np.arange(index.counts[s]) for s in order])


def worker_ids(order: np.ndarray, rank: int, world: int, workers: int, batch: int, worker: int) -> np.ndarray:
    """Image ids read by `worker` of `rank`: its contiguous stretch of the rank's part (equal steps)."""
    per_rank = len(order) // world
    steps = per_rank // batch
    counts = [(steps - w + workers - 1) // workers for w in range(workers)]  # batches k with k % workers == w
    lo = rank * per_rank + batch * sum(counts[:worker])
    return order[lo:lo + batch * counts[worker]]


class _Epoch(torch.utils.data.IterableDataset):
    """One epoch of one rank, resumed at `position`; each DataLoader worker runs one logical worker."""

    def __init__(self, src: "ShardCropSource", epoch: int, position: int, decode_here: bool):
        # what the workers need, not the source itself: the source holds the loader started ahead, which holds
        # this dataset, and that cycle would outlive the source (forked children would then collect their
        # copies of it and shut its workers down from the wrong process)
        keys = ("index", "plan", "seed", "rank", "world_size", "workers", "batch_size", "shuffle_buffer")
        self.s = SimpleNamespace(**{k: getattr(src, k) for k in keys})
        self.epoch, self.position, self.decode_here = epoch, position, decode_here

    def __iter__(self):
        s = self.s
        info = torch.utils.data.get_worker_info()
        nw = max(1, s.workers)
        logical = ((info.id if info else 0) + self.position) % nw
        if info is not None:
            torch.set_num_threads(1)
        ids = worker_ids(epoch_order(s.index, s.seed, self.epoch), s.rank, s.world_size, nw, s.batch_size, logical)
        skip = len(range(logical, self.position, nw))  # this worker's batches already handed out
        g = torch.Generator().manual_seed(s.seed * 1000003 + self.epoch * 7919 + s.rank * 101 + logical)
        stream = _shuffled(self._samples(ids), s.shuffle_buffer, g)
        b = s.batch_size
        for k, chunk in enumerate(_chunks(stream, b)):
            if k >= skip:
                yield self._batch(chunk)

    def _samples(self, ids: np.ndarray):
        idx = self.s.index
        shard = np.searchsorted(idx.offsets, ids, side="right") - 1
        cuts = np.flatnonzero(np.diff(shard)) + 1
        for run in np.split(np.arange(len(ids)), cuts) if len(ids) else []:
            gid = ids[run]
            for i, sample in zip(gid, iter_rows(idx.path(int(shard[run[0]])), idx.starts[gid], idx.ends[gid])):
                yield (int(i),) + sample

    def _batch(self, chunk):
        s = self.s
        sizes = [v.size for v in s.plan]
        ids = torch.tensor([c[0] for c in chunk], dtype=torch.int64)
        boxes = sample_boxes_batch(torch.tensor([c[4] for c in chunk]), torch.tensor([c[5] for c in chunk]), s.plan,
                                   [image_generator(s.seed, self.epoch, c[0]) for c in chunk])
        if not self.decode_here:
            return ids, _pack_bytes([c[2] for c in chunk]), boxes
        crops = [_batch_buffer((len(chunk), 3, z, z)) for z in sizes]
        bad, skips = [], []
        for i, c in enumerate(chunk):
            try:
                for v, y in enumerate(decode_crops(c[2], boxes[i], sizes)):
                    crops[v][i] = y
            except Exception as e:  # corrupt image in a shard: counted, logged, replaced
                bad.append(i)
                skips.append(f"image {c[1]} (id {c[0]}): {' '.join(f'{type(e).__name__}: {e}'.split())}")
        good = [i for i in range(len(chunk)) if i not in set(bad)]
        if not good:
            raise SslAugError(f"no decodable image in a batch of {len(chunk)} (first: {skips[0]}); "
                              "the shards are damaged: pack the folder again")
        for i in bad:
            j = max([g for g in good if g < i], default=good[0])
            ids[i] = ids[j]
            for cv in crops:
                cv[i] = cv[j]
        return ids, crops, skips


def _batch_buffer(shape: tuple) -> torch.Tensor:
    """An empty uint8 tensor; in a DataLoader worker it lives in shared memory from the start, so handing the
    batch to the training process copies nothing (as the DataLoader's own collate does)."""
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(shape, dtype=torch.uint8)
    elem = torch.empty(0, dtype=torch.uint8)
    return elem.new(elem._typed_storage()._new_shared(int(np.prod(shape)), device="cpu")).view(shape)


def _pack_bytes(datas: list[bytes]) -> tuple[torch.Tensor, torch.Tensor]:
    """B encoded images -> (one uint8 tensor of all their bytes, (B + 1,) int64 offsets): a batch crosses from
    the worker to the training process as one shared-memory tensor instead of B pickled byte strings."""
    ends = np.cumsum([0] + [len(d) for d in datas])
    blob = _batch_buffer((int(ends[-1]),))
    view = blob.numpy()
    for d, a, b in zip(datas, ends[:-1], ends[1:]):
        view[a:b] = np.frombuffer(d, dtype=np.uint8)
    return blob, torch.from_numpy(ends.astype(np.int64))


def _unpack_bytes(blob: torch.Tensor, ends: torch.Tensor) -> list[torch.Tensor]:
    """Inverse of _pack_bytes: B contiguous 1-D uint8 views of `blob` (no copy)."""
    return list(torch.split(blob, torch.diff(ends).tolist()))


def _chunks(it, n):
    buf = []
    for x in it:
        buf.append(x)
        if len(buf) == n:
            yield buf
            buf = []


def _shuffled(it, size: int, g: torch.Generator):
    """Shuffle buffer: keep `size` items, emit a random one for every new one, then drain randomly."""
    buf = []
    for x in it:
        if len(buf) < size:
            buf.append(x)
            continue
        j = int(torch.randint(len(buf), (1,), generator=g))
        buf[j], x = x, buf[j]
        yield x
    while buf:
        yield buf.pop(int(torch.randint(len(buf), (1,), generator=g)))


class ShardCropSource(_Resumable):  # a DataSource (ssl_aug.data.source) whose batches are crops
    """Batches of per-view crops streamed from a packed shard folder (see module docstring).

    plan: one (size, scale, ratio) per view (or objects with those attributes). classes: the class
    list the run was started with (resume refuses another). decode: "cpu" (workers), "device"
    (batched decode_jpeg on `device`), "auto" ("device" on CUDA, else "cpu").
    """

    _keys = ("seed", "batch_size", "world_size", "rank", "drop_last", "num_samples", "workers")

    def __init__(self, root, plan, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 workers: int = 2, shuffle_buffer: int = 512, device=None, decode: str = "auto",
                 classes: list[str] | None = None, verbose: bool = True):
        _check_common(batch_size, rank, world_size)
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise SslAugError(f"data workers must be an integer >= 0, got {workers!r}")
        if decode not in DECODES:
            raise SslAugError(f"decode={decode!r} is not allowed; use one of {', '.join(DECODES)}")
        self.index = read_index(root, classes)
        self.plan = crop_plan(plan)
        nw, shards = max(1, workers), len(self.index.names)
        if world_size * nw > shards:
            raise SslAugError(f"{world_size} rank(s) x {nw} worker(s) = {world_size * nw} readers but only {shards} "
                              f"shard(s) in {self.index.root}; use fewer data workers or pack with a smaller "
                              "--shard-size")
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.decode = ("device" if self.device.type == "cuda" else "cpu") if decode == "auto" else decode
        self.classes, self.labels = self.index.classes, torch.from_numpy(self.index.labels)
        self.num_samples = self.index.num_samples
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.workers, self.shuffle_buffer, self.drop_last, self.verbose = workers, max(1, int(shuffle_buffer)), True, verbose
        self.epoch, self.position, self.skipped = 0, 0, 0
        self._ahead = None  # ((epoch, position), started loader iterator, its finaliser): the next epoch

    def __len__(self) -> int:
        return (self.num_samples // self.world_size) // self.batch_size

    def state_dict(self) -> dict:
        return dict(super().state_dict(), classes=list(self.classes))

    def load_state_dict(self, state: dict) -> None:
        if "classes" in state:
            read_index(self.index.root, state["classes"], check_files=False)
        super().load_state_dict(state)

    def close(self) -> None:
        """Stop the next epoch's workers if they were started ahead (see the module docstring)."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            ahead[2]()  # the finaliser: stops the workers once

    def _loader(self, epoch: int, position: int):
        """A started DataLoader iterator over `epoch` from batch `position`: the one started ahead when it matches."""
        if self._ahead is not None and self._ahead[0] == (epoch, position):
            (_, loader_iter, finaliser), self._ahead = self._ahead, None
            finaliser.cancel()
            return loader_iter
        self.close()  # started for another epoch or position (a resume): its workers stop
        ds = _Epoch(self, epoch, position, decode_here=self.decode == "cpu")
        return iter(torch.utils.data.DataLoader(ds, batch_size=None, num_workers=self.workers,
                                                pin_memory=self.device.type == "cuda", persistent_workers=False))

    def _start_ahead(self) -> None:
        """Start the next epoch's workers now. Unless consumed or closed first, they are stopped when this
        source is collected or when the process exits, before multiprocessing terminates its daemonic
        children (a plain kill would make the DataLoader report a worker killed by a signal)."""
        key = (self.epoch + 1, 0)
        loader_iter = self._loader(*key)
        self._ahead = (key, loader_iter, multiprocessing.util.Finalize(
            self, _stop_workers, args=(weakref.ref(loader_iter),), exitpriority=10))

    def __iter__(self):
        self._begin()
        for ids, crops, skips in self._decoded(self._loader(self.epoch, self.position)):
            for msg in skips:
                self.skipped += 1
                if self.verbose:
                    print(f"skipped corrupt {msg} (replaced by another image of its batch; {self.skipped} so far)",
                          file=sys.stderr)
            self.position += 1
            if self.workers and self._ahead is None and len(self) - self.position <= 2 * self.workers:
                # the current workers already hold every remaining batch (2 prefetched each): start the next
                # epoch's workers now, so their start-up and shuffle-buffer fill overlap this epoch's tail
                self._start_ahead()
            yield ids.to(self.device, non_blocking=True), crops

    def _decoded(self, batches):
        """(ids, crops on the device, skip messages) per loader batch. decode="device": batch k + 1 is decoded
        in a background thread while the caller works on batch k (the decoder releases the GIL, so the host
        side of the decode overlaps the training step's launches); at most one batch is decoded ahead."""
        sizes = [v.size for v in self.plan]
        if self.decode == "cpu":
            for ids, crops, skips in batches:
                yield ids, [c.to(self.device, non_blocking=True) for c in crops], skips
            return
        from concurrent.futures import ThreadPoolExecutor

        def decode(batch):
            ids, (blob, ends), boxes = batch
            return (ids, *self._device_decode(ids, _unpack_bytes(blob, ends), boxes, sizes))

        with ThreadPoolExecutor(1, thread_name_prefix="ssl_aug_decode") as pool:
            pending = None
            for batch in batches:
                ahead = pool.submit(decode, batch)
                if pending is not None:
                    yield pending.result()
                pending = ahead
            if pending is not None:
                yield pending.result()

    def _device_decode(self, ids, datas, boxes, sizes):
        try:
            return decode_crops_device(datas, boxes, sizes, self.device), []
        except RuntimeError:  # a corrupt image fails the whole batch: find it, replace it, decode again
            from torchvision.io import decode_jpeg

            bad, skips = [], []
            for i, d in enumerate(datas):
                try:
                    decode_jpeg(d)
                except RuntimeError as e:
                    bad.append(i)
                    skips.append(f"image id {int(ids[i])}: {' '.join(str(e).split())}")
            good = [i for i in range(len(datas)) if i not in set(bad)]
            if not good:
                raise SslAugError(f"no decodable image in a batch of {len(datas)}; the shards are damaged: "
                                  "pack the folder again") from None
            for i in bad:
                j = max([g for g in good if g < i], default=good[0])
                datas[i], boxes[i], ids[i] = datas[j], boxes[j], ids[j]
            return decode_crops_device(datas, boxes, sizes, self.device), skips
