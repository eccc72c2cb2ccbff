"""`ViewSpec`: one family of augmented views (crop, flip, colour, grayscale, blur, solarize, policy,
normalisation) as nested dataclasses, validated on construction, mapped to and from recipe dicts."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Optional

from ssl_aug.errors import SslAugError

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
AUTO_AUGMENT = (None, "randaugment", "autoaugment")


def _prob(name: str, p) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise SslAugError(f"view spec: {name}={p!r} is not allowed; use a probability in [0, 1]")
    return float(p)


def _pair(name: str, v, lo: float = -math.inf, hi: float = math.inf, lo_open: bool = False) -> tuple:
    ok = (isinstance(v, (list, tuple)) and len(v) == 2
          and all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in v))
    if ok:
        a, b = float(v[0]), float(v[1])
        ok = a <= b and (a > lo if lo_open else a >= lo) and b <= hi
    if not ok:
        bound = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"
        raise SslAugError(f"view spec: {name}={v!r} is not allowed; use [min, max] with min <= max inside {bound}")
    return (a, b)


def _jitter_range(name: str, v, center: float, lo: float, hi: float = math.inf) -> tuple:
    """torchvision convention: a number s means [max(lo, center - s), center + s]; a pair is the range."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        if v < 0:
            raise SslAugError(f"view spec: color_jitter.{name}={v!r} is not allowed; use a number >= 0 "
                              f"or a [min, max] range")
        return (max(lo, center - float(v)), min(hi, center + float(v)))
    return _pair(f"color_jitter.{name}", v, lo, hi)


@dataclass
class ColorJitter:
    """Factors drawn uniformly per image: brightness/contrast/saturation in [lo, hi] (>= 0), hue shift in
    [lo, hi] turns (within [-0.5, 0.5]); a number s means [1 - s, 1 + s] (hue: [-s, s]). Applied with
    probability p, the four ops in a random order per image (as torchvision ColorJitter)."""
    brightness: tuple = 0.4
    contrast: tuple = 0.4
    saturation: tuple = 0.4
    hue: tuple = 0.1
    p: float = 0.8

    def __post_init__(self):
        self.brightness = _jitter_range("brightness", self.brightness, 1.0, 0.0)
        self.contrast = _jitter_range("contrast", self.contrast, 1.0, 0.0)
        self.saturation = _jitter_range("saturation", self.saturation, 1.0, 0.0)
        if isinstance(self.hue, (int, float)) and not isinstance(self.hue, bool) and not 0 <= self.hue <= 0.5:
            raise SslAugError(f"view spec: color_jitter.hue={self.hue!r} is not allowed; use a number in "
                              f"[0, 0.5] or a [min, max] range inside [-0.5, 0.5]")
        self.hue = _jitter_range("hue", self.hue, 0.0, -0.5, 0.5)
        self.p = _prob("color_jitter.p", self.p)

    @property
    def active(self) -> bool:
        identity = (self.brightness == (1.0, 1.0) and self.contrast == (1.0, 1.0)
                    and self.saturation == (1.0, 1.0) and self.hue == (0.0, 0.0))
        return self.p > 0 and not identity


@dataclass
class Blur:
    """Gaussian blur with probability p, odd kernel_size, sigma drawn uniformly per image in [lo, hi]."""
    p: float = 0.0
    kernel_size: int = 3
    sigma: tuple = (0.1, 2.0)

    def __post_init__(self):
        self.p = _prob("blur.p", self.p)
        k = self.kernel_size
        if isinstance(k, bool) or not isinstance(k, int) or k < 1 or k % 2 == 0:
            raise SslAugError(f"view spec: blur.kernel_size={k!r} is not allowed; use an odd integer >= 1")
        self.sigma = _pair("blur.sigma", self.sigma, 0.0, lo_open=True)


@dataclass
class Solarize:
    """With probability p, pixels >= threshold (on [0, 1]) become 1 - pixel."""
    p: float = 0.0
    threshold: float = 0.5

    def __post_init__(self):
        self.p = _prob("solarize.p", self.p)
        t = self.threshold
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 <= t <= 1.0:
            raise SslAugError(f"view spec: solarize.threshold={t!r} is not allowed; use a number in [0, 1]")
        self.threshold = float(t)


_NESTED = {"color_jitter": ColorJitter, "blur": Blur, "solarize": Solarize}


@dataclass
class ViewSpec:
    """One view family. Output (3, size, size); crop area fraction in `scale`, aspect ratio in `ratio`
    (RandomResizedCrop), horizontal flip p, colour jitter, grayscale p, blur, solarize, optional kornia
    policy ("randaugment" | "autoaugment"), and normalisation mean/std on [0, 1] images.
    Default: the SimCLR CIFAR view."""
    size: int = 32
    scale: tuple = (0.08, 1.0)
    ratio: tuple = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    color_jitter: ColorJitter = field(default_factory=ColorJitter)
    grayscale_p: float = 0.2
    blur: Blur = field(default_factory=Blur)
    solarize: Solarize = field(default_factory=Solarize)
    auto_augment: Optional[str] = None
    mean: tuple = CIFAR_MEAN
    std: tuple = CIFAR_STD

    def __post_init__(self):
        s = self.size
        if isinstance(s, bool) or not isinstance(s, int) or s < 1:
            raise SslAugError(f"view spec: size={s!r} is not allowed; use an integer >= 1 (pixels)")
        self.scale = _pair("scale", self.scale, 0.0, 1.0, lo_open=True)
        self.ratio = _pair("ratio", self.ratio, 0.0, lo_open=True)
        self.flip_p = _prob("flip_p", self.flip_p)
        self.grayscale_p = _prob("grayscale_p", self.grayscale_p)
        for name, cls in _NESTED.items():
            v = getattr(self, name)
            if isinstance(v, dict):
                setattr(self, name, _from_dict(cls, v, name + "."))
            elif not isinstance(v, cls):
                raise SslAugError(f"view spec: {name}={v!r} is not allowed; use a table of "
                                  f"{', '.join(f.name for f in dataclasses.fields(cls))}")
        if self.auto_augment not in AUTO_AUGMENT:
            raise SslAugError(f"view spec: auto_augment={self.auto_augment!r} is not allowed; "
                              f"use one of {', '.join(repr(a) for a in AUTO_AUGMENT)}")
        for name in ("mean", "std"):
            v = getattr(self, name)
            ok = isinstance(v, (list, tuple)) and len(v) == 3 and all(
                isinstance(a, (int, float)) and not isinstance(a, bool) for a in v)
            if not ok or (name == "std" and min(v) <= 0):
                raise SslAugError(f"view spec: {name}={v!r} is not allowed; use 3 numbers (RGB)"
                                  + (", each > 0" if name == "std" else ""))
            setattr(self, name, tuple(float(a) for a in v))

    @classmethod
    def from_dict(cls, d: dict) -> "ViewSpec":
        """Build from a recipe table (keys as the field names; nested tables for color_jitter, blur,
        solarize). Unknown keys raise SslAugError listing the allowed ones."""
        return _from_dict(cls, d, "")

    def to_dict(self) -> dict:
        """Plain dict (lists for pairs) that `from_dict` maps back to an equal spec."""
        def plain(v):
            if isinstance(v, tuple):
                return [plain(a) for a in v]
            if isinstance(v, dict):
                return {k: plain(a) for k, a in v.items()}
            return v
        return plain(dataclasses.asdict(self))

    def replace(self, **changes) -> "ViewSpec":
        """A validated copy with some fields changed (nested fields may be given as dicts of changes)."""
        for name in _NESTED:
            if isinstance(changes.get(name), dict):
                changes[name] = dataclasses.replace(getattr(self, name), **changes[name])
        return dataclasses.replace(self, **changes)


def _from_dict(cls, d, prefix: str):
    if not isinstance(d, dict):
        raise SslAugError(f"view spec: {prefix.rstrip('.') or 'view'}={d!r} is not allowed; use a table")
    allowed = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(d) - set(allowed))
    if unknown:
        raise SslAugError(f"view spec: unknown key {prefix}{unknown[0]!r}; allowed keys: {', '.join(allowed)}")
    return cls(**d)
