"""Everything a run builds before its first step: device, data source, views, model, optimisation.

Pure functions of the recipe (and the process's rank), so the trainer, benchmarks and tests build
runs the same way.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from pathlib import Path

import torch
from torch import nn

from ssl_aug import distributed as dist
from ssl_aug.config import Config
from ssl_aug.data import BatchSource, ImageDataset, ShardStream, load_dataset
from ssl_aug.data.subset import balanced_subset
from ssl_aug.device import resolve_device
from ssl_aug.errors import SslAugError
from ssl_aug.methods import build_method
from ssl_aug.models import backbone_args_for, build_backbone
from ssl_aug.optim import build_optimizer, extended_schedule

__all__ = ["tune_allocator", "load_training_data", "build_model", "autocast", "training_device", "check_fits_device",
           "build_source", "stream_shards", "build_optimization", "DEVICE_DATA_SHARE"]

DEVICE_DATA_SHARE = 0.5  # the training set may take at most this share of the GPU's free memory


_ALLOCATOR = {"M_TRIM_THRESHOLD": (-1, 1 << 30), "M_TOP_PAD": (-2, 1 << 28), "M_MMAP_THRESHOLD": (-3, 1 << 25)}


def tune_allocator() -> bool:
    """glibc only (CPU training): keep freed memory for the next step instead of handing it back to the
    OS and page-faulting it in again (measured: ~11x fewer page faults and ~25% less CPU per small-CNN
    step). The heap keeps up to 1 GiB of freed memory. Off with SSL_AUG_MALLOC_TUNE=0. True if applied."""
    if not sys.platform.startswith("linux") or os.environ.get("SSL_AUG_MALLOC_TUNE", "1") == "0":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # musl or no glibc
        return False
    return all(mallopt(param, value) == 1 for param, value in _ALLOCATOR.values())


def load_training_data(cfg: Config, split: str | None = None) -> ImageDataset:
    """The recipe's data set, split `split` (default: the training split `data.split`); the
    training split is cut to `data.subset` images (a fixed, seed-0 class-balanced subset)."""
    split = cfg.data.split if split is None else split
    ds = load_dataset(cfg.data.name, split=split, root=cfg.data.root, download=cfg.data.download, **cfg.data.options)
    if split == cfg.data.split and cfg.data.subset and cfg.data.subset < len(ds.labels):
        idx = balanced_subset(ds.labels, cfg.data.subset, seed=0)  # the same images for every run seed
        ds = ds.subset(idx)  # keeps group labels
    return ds


def build_model(cfg: Config) -> nn.Module:
    """Backbone + method head(s) from the recipe (seeded, so every rank starts identical)."""
    torch.manual_seed(cfg.seed)
    backbone = build_backbone(cfg.model.backbone, **backbone_args_for(cfg.model.backbone, cfg.model.backbone_args))
    method_args = {k: v for k, v in cfg.method.items() if k != "name"}
    return build_method(cfg.method["name"], backbone, **method_args)


def autocast(device: torch.device, amp: str):
    """The autocast context for train.amp ("none" | "bf16" | "fp16"); fp16 is refused on CPU."""
    if amp == "none":
        return contextlib.nullcontext()
    if device.type == "cpu" and amp == "fp16":
        raise SslAugError("train.amp = 'fp16' needs CUDA; on CPU use 'bf16' or 'none'")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def training_device(cfg: Config, world_size: int) -> torch.device:
    """The recipe's device; with several CUDA ranks each process takes cuda:LOCAL_RANK."""
    device = resolve_device(cfg.device)
    if device.type == "cuda" and world_size > 1:
        device = torch.device("cuda", dist.local_rank())
    if device.type == "cuda" and cfg.train.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    return device


def check_fits_device(num_bytes: int, device: torch.device, what: str) -> None:
    """Refuse (one line with the size) data that would take over DEVICE_DATA_SHARE of a GPU's free memory."""
    if device.type != "cuda":
        return
    free, total = torch.cuda.mem_get_info(device)
    if num_bytes > DEVICE_DATA_SHARE * free:
        raise SslAugError(f"{what} needs {num_bytes / 2**30:.1f} GiB on {device}, which has {free / 2**30:.1f} of "
                          f"{total / 2**30:.1f} GiB free (limit {DEVICE_DATA_SHARE:.0%} of free): set data.stream = true "
                          "(npz shards), data.subset, or a smaller image size")


def stream_shards(cfg: Config) -> list[Path]:
    """The npz shards data.stream reads: data set `npz` (shards of data.split in data.root) or
    cifar10/cifar100 stored as <name>_<split>*.npz shards."""
    from ssl_aug.data import default_root
    from ssl_aug.data.npz import find_split_shards, sorted_shards

    name, split = cfg.data.name, cfg.data.split
    root = Path(cfg.data.root).expanduser() if cfg.data.root else None
    if name == "npz":
        if root is None or not root.is_dir():
            raise SslAugError(f"data.stream with data.name = 'npz' needs data.root = a folder of .npz shards, got {root}")
        shards = find_split_shards(root, split)
    elif name in ("cifar10", "cifar100"):
        base = root or default_root()
        shards = next((found for folder in (base, base / name)
                       if (found := sorted_shards(folder.glob(f"{name}_{split}*.npz")))), [])
    else:
        raise SslAugError(f"data.stream = true is not supported for data.name = {name!r}; allowed: npz, cifar10, "
                          "cifar100 (pack an image folder with `ssl-aug data pack`, then use data.name = 'npz')")
    if not shards:
        raise SslAugError(f"data.stream found no .npz shards of split {split!r} for data set {name!r} "
                          f"(root {root or default_root()})")
    return shards


def build_source(cfg: Config, data: ImageDataset | None, device: torch.device, rank: int, world_size: int):
    """The batch source: device-resident BatchSource, or ShardStream when data.stream is set
    (then `data` is ignored). Refuses a resident set that will not fit the GPU."""
    batch = cfg.train.batch_size // world_size
    if cfg.data.stream:
        if cfg.data.subset:
            raise SslAugError(f"data.subset = {cfg.data.subset} cannot be combined with data.stream = true; "
                              "drop one of them")
        return ShardStream(stream_shards(cfg), batch_size=batch, seed=cfg.seed, rank=rank, world_size=world_size,
                           drop_last=True, device=device)
    check_fits_device(data.images.numel() * data.images.element_size(), device,
                      f"the training set ({len(data)} images of {tuple(data.images.shape[1:])})")
    return BatchSource(data.images, batch_size=batch, seed=cfg.seed, rank=rank, world_size=world_size,
                       drop_last=True, device=device)


class WarmupCosine(torch.optim.lr_scheduler.LambdaLR):
    """Warm-up + cosine over `total_steps`. `segments` (saved with the state): [[0, total]], plus
    [step, new total] each time a resume extends train.epochs (a new cosine tail: optim.extended_schedule)."""

    def __init__(self, optimizer, total_steps: int, warmup: int, min_ratio: float):
        self.segments = [[0, total_steps]]
        super().__init__(optimizer, lambda s: extended_schedule(s, self.segments, warmup, min_ratio))


def build_optimization(cfg: Config, method: nn.Module, steps_per_epoch: int, device: torch.device):
    """-> (optimizer, scheduler, scaler, total_steps). lr scaled by batch/256 when lr_scaling = linear;
    warm-up + cosine over the steps that will actually run (train.max_steps caps the epoch budget and
    shortens the warm-up in proportion)."""
    t = cfg.train
    lr = t.lr * (t.batch_size / 256 if t.lr_scaling == "linear" else 1.0)
    optimizer = build_optimizer(method, t.optimizer, lr, t.momentum, t.weight_decay)
    total_steps = t.epochs * steps_per_epoch
    if t.max_steps:
        total_steps = min(total_steps, t.max_steps)
    # warm-up keeps its share of the run when train.max_steps cuts the epoch budget (else a 20-step
    # run of a 10-epoch-warm-up recipe would never leave warm-up)
    warmup = int(round(t.warmup_epochs * steps_per_epoch * total_steps / max(t.epochs * steps_per_epoch, 1)))
    scheduler = WarmupCosine(optimizer, total_steps, warmup, t.min_lr_ratio)
    scaler = torch.amp.GradScaler(device.type, enabled=t.amp == "fp16")
    return optimizer, scheduler, scaler, total_steps
