"""Fit the machine or say so before starting: the estimate line a run prints first, and the one-line
refusal (with overrides that would fit) when the estimated memory exceeds what the machine has."""

from __future__ import annotations

import torch

from ssl_aug.errors import SslAugError
from ssl_aug.train.footprint import GIB, HOST_SHARE, Footprint, available_host_bytes, duration, estimate_footprint
from ssl_aug.train.recipe_toml import _value

__all__ = ["check_fits_machine", "fits", "smaller_settings"]

SMALL_CROP = 32  # the crop of the small-CNN fallback (the CPU recipes' size)
MIN_BATCH = 16


def _free(device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    return torch.cuda.mem_get_info(device)[0]


def fits(fp: Footprint, host_free: int, device_free: int | None, process: int) -> bool:
    """True when the estimate fits HOST_SHARE of what is free (the host need includes this process)."""
    host_ok = fp.host - process <= HOST_SHARE * host_free
    return host_ok and (device_free is None or fp.device <= HOST_SHARE * device_free)


def _with(cfg, overrides: dict):
    from ssl_aug.config import apply_overrides, config_from_dict

    return config_from_dict(apply_overrides(cfg.to_dict(), overrides))


def smaller_settings(cfg, image_side: int) -> list[dict]:
    """Override sets to try, in order: the recipe at smaller batches, then a small CNN on 32 px crops
    (what the *_cpu recipes use) at the recipe's batch and smaller ones."""
    batches, b = [], cfg.train.batch_size
    while b > MIN_BATCH:
        b //= 2
        batches.append(b)
    tries = [{"train.batch_size": b} for b in batches]
    size = cfg.augment.get("size", SMALL_CROP)
    if cfg.model.backbone == "small_cnn" and size <= SMALL_CROP:
        return tries
    small = {"model.backbone": "small_cnn", "augment.size": min(SMALL_CROP, size)}
    if cfg.model.backbone_args:
        small["model.backbone_args"] = {}
    if (cfg.augment.get("multicrop") or {}).get("local_views"):
        small["augment.multicrop.size"] = small["augment.size"] // 2
    blur = cfg.augment.get("blur")
    if isinstance(blur, dict) and blur.get("kernel_size", 3) >= small["augment.size"] // 2:
        small["augment.blur.kernel_size"] = 3
    if cfg.data.name == "imagefolder" and image_side > round(1.25 * small["augment.size"]):
        small["data.options.size"] = round(1.25 * small["augment.size"])
    tries.append(small)
    tries += [dict(small, **{"train.batch_size": b}) for b in batches]
    return tries


def _text(overrides: dict) -> str:
    """{key: value} -> 'key=value ...' as typed on a command line (bare words unquoted, no spaces)."""
    def arg(value):
        return value if isinstance(value, str) and value.isidentifier() else _value(value).replace(" ", "")
    return " ".join(f"{key}={arg(value)}" for key, value in overrides.items())


def check_fits_machine(cfg, num_images: int, image_side: int, device: torch.device, world_size: int = 1,
                       name: str | None = None) -> str:
    """The estimate line; SslAugError (one line naming overrides that fit) when the run will not fit and
    train.check_fit is on."""
    from ssl_aug.train.footprint import _process_bytes

    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    host_free, device_free, process = available_host_bytes(), _free(device), _process_bytes()
    fp = estimate_footprint(cfg, num_images, image_side, device, world_size)
    line = fp.line(host_free + process, device_free)
    if fits(fp, host_free, device_free, process) or not getattr(cfg.train, "check_fit", True):
        return line
    found, kinds = [], set()  # the largest batch that fits, and the first small-CNN setting that fits
    for overrides in smaller_settings(cfg, image_side):
        kind = "model.backbone" in overrides
        if kind in kinds:
            continue
        side = overrides.get("data.options.size", image_side)
        other = estimate_footprint(_with(cfg, overrides), num_images, side, device, world_size)
        if fits(other, host_free, device_free, process):
            kinds.add(kind)
            need = other.host if device.type == "cpu" else other.device
            found.append(f"{_text(overrides)} (about {need / GIB:.1f} GiB, {duration(other.epoch_s)} per epoch)")
    need, free = (fp.host, host_free + process) if device.type == "cpu" else (fp.device, device_free or 0)
    what = ("host" if device.type == "cpu" else device.type) + " memory"
    views = sum(c for c in [cfg.augment.get("views", 2), (cfg.augment.get("multicrop") or {}).get("local_views", 0)])
    why = (f"batch {cfg.train.batch_size} x {views} views of {cfg.augment.get('size')} px through "
           f"{cfg.model.backbone}")
    fix = ("; overrides that fit: " + " or ".join(found)) if found else \
        "; no smaller batch or small-CNN setting fits either: free memory or lower data.subset"
    raise SslAugError(f"{name or 'this recipe'} does not fit this machine: it needs about {need / GIB:.1f} GiB of "
                      f"{what} ({why}), {free / GIB:.1f} GiB is available{fix}; train.check_fit=false starts it anyway")
