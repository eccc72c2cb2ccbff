"""Common corruptions (Hendrycks & Dietterich 2019; ImageNet-C / CIFAR-10-C protocol): 15 corruptions in
4 families x 5 severities, plus `saturate`, generated batched with torch on the images' device from uint8
(N, 3, H, W) images, seeded and replayable (same seed, device and images -> same output).

Parameters are ImageNet-C's, as in the `imagecorruptions` package (the reference the tests compare
with), at every image size; CIFAR-10-C itself used milder settings for 32 px images, so accuracies are
comparable between encoders evaluated here, not with published CIFAR-10-C tables. Where the reference
draws random numbers, the draws differ (torch generator, per image); frost uses a synthetic texture, glass
blur shuffles pixels in parallel, JPEG goes through torchvision's libjpeg (docs/evaluation.md says how
each one compares)."""

from __future__ import annotations

from typing import Callable

import torch

from ssl_aug.augment.corruptions import blur, digital, noise, weather
from ssl_aug.errors import SslAugError

Corruption = Callable[[torch.Tensor, int, torch.Generator], torch.Tensor]

FAMILIES: dict[str, tuple[str, ...]] = {
    "noise": ("gaussian_noise", "shot_noise", "impulse_noise"),
    "blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur"),
    "weather": ("snow", "frost", "fog", "brightness"),
    "digital": ("contrast", "elastic_transform", "pixelate", "jpeg_compression"),
}
_MODULES = {"noise": noise, "blur": blur, "weather": weather, "digital": digital}
CORRUPTIONS: dict[str, Corruption] = {name: getattr(_MODULES[fam], name) for fam, names in FAMILIES.items()
                                      for name in names}
COMMON: tuple[str, ...] = tuple(CORRUPTIONS)          # the 15 of the benchmark, in the paper's order
EXTRA = {"saturate": digital.saturate}                # held-out validation corruption of imagecorruptions
CORRUPTIONS.update(EXTRA)
SEVERITIES = (1, 2, 3, 4, 5)

__all__ = ["CORRUPTIONS", "COMMON", "FAMILIES", "SEVERITIES", "corrupt", "check_corruption", "check_severity",
           "list_corruptions"]


def list_corruptions(include_extra: bool = False) -> list[str]:
    """The 15 benchmark corruptions (and `saturate` with include_extra)."""
    return list(CORRUPTIONS) if include_extra else list(COMMON)


def check_corruption(name: str) -> Corruption:
    """The corruption function called `name`; an unknown name -> one-line SslAugError listing the names."""
    if name not in CORRUPTIONS:
        import difflib

        near = difflib.get_close_matches(str(name), list(CORRUPTIONS), n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        raise SslAugError(f"unknown corruption {name!r}; {hint}choose one of: {', '.join(CORRUPTIONS)}")
    return CORRUPTIONS[name]


def check_severity(severity) -> int:
    """severity as an int in 1..5, else a one-line SslAugError."""
    if isinstance(severity, bool) or not isinstance(severity, int) or severity not in SEVERITIES:
        raise SslAugError(f"corruption severity {severity!r} is not allowed; use an integer from 1 to 5")
    return severity


def corrupt(images: torch.Tensor, name: str, severity: int, seed: int = 0,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """uint8 (N, 3, H, W) on any device -> corrupted uint8 (N, 3, H, W) on the same device.

    The float result in [0, 1] is clipped and truncated to 8 bits as the reference does
    (np.uint8(clip(x, 0, 1) * 255)). Randomness comes from `generator` (on the images' device) or from
    a fresh one seeded with `seed`: the same call replays the same corruption."""
    fn = check_corruption(name)
    severity = check_severity(severity)
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4 \
            or images.shape[1] != 3:
        got = f"{tuple(images.shape)} {images.dtype}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise SslAugError(f"corrupt() needs uint8 images of shape (N, 3, H, W), got {got}")
    if images.shape[0] == 0:
        return images.clone()
    if generator is None:
        generator = torch.Generator(device=images.device).manual_seed(int(seed))
    out = fn(images.float() / 255, severity, generator)
    return (out.clamp(0, 1) * 255).floor_().to(torch.uint8)
