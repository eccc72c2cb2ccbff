"""Named view recipes (`PRESETS`: name -> function returning (specs, counts)) and named ablation edits
(`EDITS`, `edit_specs`): e.g. "no_color_jitter", "jitter_strength(0.5)", "crop_only"."""

from __future__ import annotations

import re

from ssl_aug.augment.ops import OPS
from ssl_aug.augment.spec import IMAGENET_MEAN, IMAGENET_STD, Blur, ColorJitter, Solarize, ViewSpec
from ssl_aug.errors import SslAugError
from ssl_aug.registry import Registry

PRESETS = Registry("view preset")
register_preset = PRESETS.register


def list_presets() -> list[str]:
    """Names of the registered view presets."""
    return PRESETS.names()


def _strength(s: float, p: float = 0.8) -> ColorJitter:
    return ColorJitter(brightness=0.8 * s, contrast=0.8 * s, saturation=0.8 * s, hue=min(0.5, 0.2 * s), p=p)


@register_preset("simclr_cifar")
def simclr_cifar(size: int = 32) -> tuple[list[ViewSpec], list[int]]:
    """SimCLR CIFAR: crop scale 0.08-1, flip 0.5, jitter (0.4, 0.4, 0.4, 0.1) p=0.8, gray 0.2; 2 views."""
    return [ViewSpec(size=size)], [2]


@register_preset("simclr_imagenet")
def simclr_imagenet(size: int = 224) -> tuple[list[ViewSpec], list[int]]:
    """SimCLR ImageNet: jitter strength 1.0 = (0.8, 0.8, 0.8, 0.2) p=0.8, gray 0.2, blur p=0.5 with a
    kernel ~10% of the size (odd), sigma 0.1-2; 2 views."""
    k = max(3, int(0.1 * size) | 1)
    return [ViewSpec(size=size, color_jitter=_strength(1.0), blur=Blur(p=0.5, kernel_size=k),
                     mean=IMAGENET_MEAN, std=IMAGENET_STD)], [2]


@register_preset("swav_multicrop")
def swav_multicrop(global_size: int = 32, local_size: int = 16, n_global: int = 2, n_local: int = 6,
                   ) -> tuple[list[ViewSpec], list[int]]:
    """SwAV multi-crop (CIFAR default 2x32 + 6x16): global scale 0.14-1, local 0.05-0.14, jitter
    strength 1.0 p=0.8, gray 0.2."""
    g = ViewSpec(size=global_size, scale=(0.14, 1.0), color_jitter=_strength(1.0))
    return [g, g.replace(size=local_size, scale=(0.05, 0.14))], [n_global, n_local]


@register_preset("byol_asymmetric")
def byol_asymmetric(size: int = 32) -> tuple[list[ViewSpec], list[int]]:
    """BYOL's two different views: jitter (0.4, 0.4, 0.2, 0.1) p=0.8, gray 0.2; view 1 blur p=1.0,
    view 2 blur p=0.1 and solarize p=0.2 (kernel ~10% of size, at least 3)."""
    k = max(3, int(0.1 * size) | 1)
    cj = ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, p=0.8)
    a = ViewSpec(size=size, color_jitter=cj, blur=Blur(p=1.0, kernel_size=k))
    b = a.replace(blur=Blur(p=0.1, kernel_size=k), solarize=Solarize(p=0.2))
    return [a, b], [1, 1]


def get_preset(name: str, **kw) -> tuple[list[ViewSpec], list[int]]:
    """(specs, counts) of a named preset; unknown names raise SslAugError."""
    return PRESETS.get(name)(**kw)


def no_color_jitter(spec: ViewSpec) -> ViewSpec:
    return spec.replace(color_jitter={"p": 0.0})


def no_grayscale(spec: ViewSpec) -> ViewSpec:
    return spec.replace(grayscale_p=0.0)


def no_blur(spec: ViewSpec) -> ViewSpec:
    return spec.replace(blur={"p": 0.0})


def no_solarize(spec: ViewSpec) -> ViewSpec:
    return spec.replace(solarize={"p": 0.0})


def no_flip(spec: ViewSpec) -> ViewSpec:
    return spec.replace(flip_p=0.0)


def jitter_strength(spec: ViewSpec, s: float) -> ViewSpec:
    """Jitter ranges s * (0.8, 0.8, 0.8, 0.2) (hue capped at 0.5), keeping the spec's p."""
    if isinstance(s, bool) or not isinstance(s, (int, float)) or s < 0:
        raise SslAugError(f"jitter_strength({s!r}) is not allowed; use a number >= 0")
    return spec.replace(color_jitter=_strength(float(s), spec.color_jitter.p))


def crop_only(spec: ViewSpec) -> ViewSpec:
    """Random resized crop (and flip) only: every other registered op off (colour, grayscale, blur,
    solarize, policy, kornia ops, ...)."""
    changes: dict = {}
    for name, op in OPS.items():
        if name != "crop":
            changes.update(op.off())
    return spec.replace(**changes)


EDITS = {"no_color_jitter": no_color_jitter, "no_grayscale": no_grayscale, "no_blur": no_blur,
         "no_solarize": no_solarize, "no_flip": no_flip, "jitter_strength": jitter_strength,
         "crop_only": crop_only}

_EDIT_RE = re.compile(r"^\s*([a-z_]+)\s*(?:\(\s*([-+0-9.eE]+)\s*\))?\s*$")


def edit_specs(specs: list[ViewSpec], edit: str) -> list[ViewSpec]:
    """Apply a named edit such as "no_grayscale" or "jitter_strength(0.5)" to every spec."""
    m = _EDIT_RE.match(edit) if isinstance(edit, str) else None
    if not m or m.group(1) not in EDITS or (m.group(2) is None) != (m.group(1) != "jitter_strength"):
        raise SslAugError(f"unknown view edit {edit!r}; allowed: {', '.join(n for n in EDITS if n != 'jitter_strength')}"
                          f", jitter_strength(s)")
    fn = EDITS[m.group(1)]
    return [fn(s, float(m.group(2))) if m.group(2) is not None else fn(s) for s in specs]
