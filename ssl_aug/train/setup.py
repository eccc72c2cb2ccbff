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
from ssl_aug.data import ImageDataset, get_source, load_dataset
from ssl_aug.data.subset import balanced_subset
from ssl_aug.device import resolve_device
from ssl_aug.errors import SslAugError
from ssl_aug.methods import build_method
from ssl_aug.models import backbone_args_for, build_backbone
from ssl_aug.optim import build_optimizer, extended_schedule
from ssl_aug.schedules import parse_schedule

__all__ = ["tune_allocator", "load_training_data", "build_model", "autocast", "training_device", "check_fits_device",
           "build_source", "build_shard_source", "shard_root", "streams", "build_optimization", "build_schedules",
           "apply_schedules", "DEVICE_DATA_SHARE"]

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
    folder = shard_root(cfg, split)
    if folder is not None:  # the eval view of a shard pack, at data.options.size (shards) or the views' size
        options = {k: v for k, v in cfg.data.options.items()
                   if k in ("workers", "shuffle_buffer", "decode", "eval_resize")
                   or (k == "size" and cfg.data.name == "shards")}
        options.setdefault("size", int(cfg.augment.get("size", 224)))
        ds = load_dataset("shards", split="all", root=folder, **options)
    else:
        ds = load_dataset(cfg.data.name, split=split, root=cfg.data.root, download=cfg.data.download,
                          **cfg.data.options)
    if split == cfg.data.split and cfg.data.subset and cfg.data.subset < len(ds.labels):
        idx = balanced_subset(ds.labels, cfg.data.subset, seed=0)  # the same images for every run seed
        ds = ds.subset(idx)  # keeps group labels
    return ds


def build_model(cfg: Config) -> nn.Module:
    """Backbone + method head(s) from the recipe (seeded, so every rank starts identical)."""
    torch.manual_seed(cfg.seed)
    backbone = build_backbone(cfg.model.backbone, **backbone_args_for(cfg.model.backbone, cfg.model.backbone_args))
    check_view_sizes(backbone, cfg)
    method_args = {k: v for k, v in cfg.method.items() if k != "name"}
    return build_method(cfg.method["name"], backbone, **method_args)


SYNC_BATCHNORM = (True, False, "auto")


def sync_batchnorm_on(cfg: Config, world_size: int, model: nn.Module) -> bool:
    """model.sync_batchnorm: true | false | "auto" (default: on when several ranks train a model with
    BatchNorm, e.g. the ResNet recipes, so batch statistics cover the global batch as on one device)."""
    value = cfg.model.sync_batchnorm
    if value not in SYNC_BATCHNORM or not isinstance(value, (bool, str)):
        raise SslAugError(f"model.sync_batchnorm = {value!r} is not allowed; use true, false or \"auto\"")
    if world_size < 2 or value is False:
        return False
    return value is True or any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def buffer_sync(sync: bool) -> dict:
    """DDP keyword for syncing buffers in forward: forward_sync_buffers where torch has it (broadcast_buffers
    is deprecated there), else broadcast_buffers. Buffers are identical at construction either way."""
    import inspect

    if "forward_sync_buffers" in inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters:
        return {"forward_sync_buffers": sync}
    return {"broadcast_buffers": sync}


def check_view_sizes(backbone: nn.Module, cfg: Config) -> None:
    """One eval-mode forward of two blank images at the recipe's smallest view size: a crop too small for
    the backbone's downsampling is one line now, not a shape error at the first step. Eval mode and no
    grad: no BatchNorm statistics or random numbers are touched."""
    from ssl_aug.augment.recipe import views_of

    specs = views_of(cfg).specs
    size = min(spec.size for spec in specs)
    was_training = backbone.training
    try:
        with torch.no_grad():
            backbone.eval()(torch.zeros(2, 3, size, size))
    except RuntimeError as exc:
        key = "augment.size" if size == specs[0].size else "augment.multicrop.size"
        raise SslAugError(f"recipe key '{key}' = {size} is too small for backbone {cfg.model.backbone!r} "
                          f"({str(exc).splitlines()[0][:120]}); use larger crops") from None
    finally:
        backbone.train(was_training)


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


_AUTO_SHARDS: dict = {}  # (tree, size) -> the auto-packed shard folder or None, decided once per process


def shard_root(cfg: Config, split: str | None = None) -> Path | None:
    """The packed shard folder of `split` (default data.split) the run reads: data.name = "shards", an
    image-folder / npz data.root holding a `--format shards` pack, or an image folder whose decoded pack
    would exceed STREAM_ABOVE_BYTES (packed once into shards of its original images); else None."""
    from ssl_aug.data.shard_eval import shard_split_root
    from ssl_aug.data.shard_read import is_shard_folder

    split = cfg.data.split if split is None else split
    root = Path(cfg.data.root).expanduser() if cfg.data.root else None
    if root is None or cfg.data.name not in ("shards", "imagefolder", "npz"):
        return None
    if cfg.data.name == "shards" or is_shard_folder(root) or is_shard_folder(root / split):
        return shard_split_root(root, split)
    if cfg.data.name == "imagefolder":
        from ssl_aug.data.imagefolder import resolve_tree
        from ssl_aug.data.shard_cache import auto_shards

        key = (str(resolve_tree(root, split).resolve()), int(cfg.data.options.get("size", 96)))
        if key not in _AUTO_SHARDS:
            _AUTO_SHARDS[key] = auto_shards(Path(key[0]), key[1], rank=dist.rank())
        return _AUTO_SHARDS[key]
    return None


def streams(cfg: Config) -> bool:
    """True when training reads batches from disk (data.stream or a shard pack) instead of memory."""
    return bool(cfg.data.stream) or shard_root(cfg) is not None


def build_shard_source(cfg: Config, root: Path, device: torch.device, rank: int, world_size: int):
    """ShardCropSource over `root` cutting the recipe's views' crops (data.options: workers, shuffle_buffer,
    decode)."""
    from ssl_aug.augment.crop_views import crop_plan_of
    from ssl_aug.augment.recipe import views_of
    from ssl_aug.data.stream import ShardCropSource

    if cfg.data.subset:
        raise SslAugError(f"data.subset = {cfg.data.subset} cannot be combined with a shard pack; drop it")
    if cfg.train.view_candidates > 1:
        raise SslAugError(f"train.view_candidates = {cfg.train.view_candidates} needs the whole image on the device; "
                          "with a shard pack use 1")
    o = cfg.data.options
    return ShardCropSource(root, crop_plan_of(views_of(cfg).build()), cfg.train.batch_size // world_size,
                           seed=cfg.seed, rank=rank, world_size=world_size, workers=o.get("workers", 2),
                           shuffle_buffer=o.get("shuffle_buffer", 512), device=device, decode=o.get("decode", "auto"))


def build_source(cfg: Config, data: ImageDataset | None, device: torch.device, rank: int, world_size: int):
    """The training DataSource of the recipe's data set (ssl_aug.data.source): a device-resident
    BatchSource over `data`, or the source's stream when data.stream is set (then `data` is ignored).
    Refuses a resident set that will not fit the GPU. A shard pack gives a ShardCropSource (crops)."""
    if (root := shard_root(cfg)) is not None:
        return build_shard_source(cfg, root, device, rank, world_size)
    if cfg.data.stream and cfg.data.subset:
        raise SslAugError(f"data.subset = {cfg.data.subset} cannot be combined with data.stream = true; "
                          "drop one of them")
    if not cfg.data.stream:
        check_fits_device(data.images.numel() * data.images.element_size(), device,
                          f"the training set ({len(data)} images of {tuple(data.images.shape[1:])})")
    return get_source(cfg.data.name).batches(cfg.data, data, split=cfg.data.split,
                                             batch_size=cfg.train.batch_size // world_size, seed=cfg.seed,
                                             rank=rank, world_size=world_size, device=device)


def build_schedules(cfg: Config, method: nn.Module, optimizer) -> dict:
    """The recipe's schedules (ssl_aug.schedules) checked against what they drive: a method key must be
    a plain float attribute of the method; train.momentum needs an optimiser with momentum."""
    schedules = {key: parse_schedule(key, table) for key, table in cfg.schedules.items()}
    for key in schedules:
        section, name = key.split(".", 1)
        if section == "method":
            value = getattr(method, name, None)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise SslAugError(f"recipe key '{key}' cannot follow a schedule: method {cfg.method['name']!r} has "
                                  f"no float hyperparameter {name!r} read at step time")
        elif name == "momentum" and "momentum" not in optimizer.param_groups[0]:
            raise SslAugError(f"recipe key 'train.momentum' cannot follow a schedule with train.optimizer = "
                              f"{cfg.train.optimizer!r}; allowed with: sgd, lars")
    return schedules


def apply_schedules(schedules: dict, method: nn.Module, optimizer, step: int, steps_per_epoch: int,
                    total_steps: int) -> dict:
    """Set every scheduled value for optimiser step `step` (Python floats: no device work). train.* keys
    set the decayed parameter group (group 0). -> {key: value}."""
    values = {}
    for key, sched in schedules.items():
        value = values[key] = sched.at(step, steps_per_epoch, total_steps)
        section, name = key.split(".", 1)
        if section == "method":
            setattr(method, name, value)
        else:
            optimizer.param_groups[0][name] = value
    return values


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
