"""Colour jitter (torchvision ColorJitter per image: own factors, own op order, probability p). Nested
table `color_jitter = {brightness, contrast, saturation, hue, p}`. Parameters: jitter_on (N,) bool;
factors (N,4) float32 [brightness, contrast, saturation, hue shift in turns]; order (N,4) int64,
order[n, k] = id of the op applied k-th (0 b, 1 c, 2 s, 3 h)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ssl_aug.augment.ops.base import Op, pair, prob, uniform
from ssl_aug.augment.ops.functional import adjust_hue, eye3, hue_matrices, luma, luma_rows
from ssl_aug.errors import SslAugError

JITTER_OPS = ("brightness", "contrast", "saturation", "hue")  # ids 0..3 used in `order`


def _jitter_range(name: str, v, center: float, lo: float, hi: float = math.inf) -> tuple:
    """torchvision convention: a number s means [max(lo, center - s), center + s]; a pair is the range."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        if v < 0:
            raise SslAugError(f"view spec: color_jitter.{name}={v!r} is not allowed; use a number >= 0 "
                              f"or a [min, max] range")
        return (max(lo, center - float(v)), min(hi, center + float(v)))
    return pair(f"color_jitter.{name}", v, lo, hi)


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
        self.p = prob("color_jitter.p", self.p)

    @property
    def active(self) -> bool:
        identity = (self.brightness == (1.0, 1.0) and self.contrast == (1.0, 1.0)
                    and self.saturation == (1.0, 1.0) and self.hue == (0.0, 0.0))
        return self.p > 0 and not identity


def color_jitter_(x: torch.Tensor, factors: torch.Tensor, order: torch.Tensor, on: torch.Tensor) -> torch.Tensor:
    """In place, torchvision ColorJitter per image with its own factors (M,4) [b, c, s, hue] and op
    order (M,4), only where on (M,) is True. Brightness, contrast and saturation are one blend
    x * a + t * (1 - a), clamped (t = 0, mean gray, gray); at each of the 4 positions every image
    takes its own blend, and hue runs on the images whose hue op sits at that position.
    Index sets are computed from CPU copies of the parameters (no device sync when they live there)."""
    fc, oc, onc = factors.cpu(), order.cpu(), on.cpu()
    dev = x.device
    m = x.shape[0]
    for pos in range(4):
        op = oc[:, pos]
        blend = onc & (op < 3)
        if blend.any():
            a = torch.where(blend, fc.gather(1, op.clamp(max=2)[:, None]).squeeze(1), 1.0)
            c_gray = (blend & (op == 2)).float() * (1.0 - a)  # saturation: t = gray * (1 - a)
            c_mean = (blend & (op == 1)).float() * (1.0 - a)  # contrast: t = mean(gray) * (1 - a)
            a, c_gray, c_mean = (v.to(dev, non_blocking=True).view(m, 1, 1, 1) for v in (a, c_gray, c_mean))
            if bool((blend & (op > 0)).any()):
                gray = luma(x)
                mean = gray.mean((2, 3), keepdim=True)
                t = gray.mul_(c_gray).add_(mean.mul_(c_mean))
                x.mul_(a).add_(t).clamp_(0.0, 1.0)  # x * a + t as torchvision's _blend (a broadcast
                # addcmul is ~20x slower than these in-place passes on CPU)
            else:
                x.mul_(a).clamp_(0.0, 1.0)
        hue = onc & (op == 3) & (fc[:, 3] != 0)
        if hue.any():
            idx = hue.nonzero().squeeze(1)
            idx_d = idx.to(dev, non_blocking=True)
            x.index_copy_(0, idx_d, adjust_hue(x.index_select(0, idx_d), fc[idx, 3].to(dev, non_blocking=True)))
    return x


def color_jitter_masked(x: torch.Tensor, factors: torch.Tensor, order: torch.Tensor, on: torch.Tensor) -> torch.Tensor:
    """The same maths as `color_jitter_` with every choice a mask over the whole batch (parameters on
    x's device, no index sets, no host reads): the device path. Per position: the blend for all
    images (a = 1, t = 0 where the op is not a blend), the hue rotation for all, then a select."""
    m = x.shape[0]
    blend = on[:, None] & (order < 3)  # (M,4)
    a = torch.where(blend, factors.gather(1, order.clamp(max=2)), 1.0)
    one_minus = 1.0 - a
    c_gray = (blend & (order == 2)) * one_minus
    c_mean = (blend & (order == 1)) * one_minus
    hue = on[:, None] & (order == 3) & (factors[:, 3:] != 0)
    shift = factors[:, 3]
    for pos in range(4):
        gray = luma(x)
        mean = gray.mean((2, 3), keepdim=True)
        t = gray.mul_(c_gray[:, pos].view(m, 1, 1, 1)).add_(mean.mul_(c_mean[:, pos].view(m, 1, 1, 1)))
        y = torch.addcmul(t, x, a[:, pos].view(m, 1, 1, 1)).clamp_(0.0, 1.0)
        x = torch.where(hue[:, pos].view(m, 1, 1, 1), adjust_hue(x, shift), y)
    return x


def jitter_affine(a: torch.Tensor, t: torch.Tensor, mu: torch.Tensor, factors: torch.Tensor,
                  order: torch.Tensor, on: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fast mode: fold the jitter (in each image's order, no intermediate clamps; hue as a rotation about
    the gray axis) into the running affine map A (M,3,3), t (M,3) (float64). Contrast uses the exact mean
    gray of the image at its position (linear in the channel means mu (M,3))."""
    m, dev = a.shape[0], a.device
    w = luma_rows(dev)[0]
    eye = eye3(dev).expand(m, 3, 3)
    f = factors.to(dev).double()
    order, on = order.to(dev), on.to(dev)
    ones_w = luma_rows(dev)
    sat = f[:, 2, None, None] * eye + (1 - f[:, 2, None, None]) * ones_w
    hue = hue_matrices(f[:, 3])
    for pos in range(4):
        op = torch.where(on, order[:, pos], -1)
        sb = torch.where(op == 0, f[:, 0], 1.0)  # brightness
        a, t = a * sb[:, None, None], t * sb[:, None]
        c = torch.where(op == 1, f[:, 1], 1.0)  # contrast: x * c + (1 - c) * mean gray of the current image
        mean_gray = ((a @ mu[:, :, None]).squeeze(2) + t) @ w
        a, t = a * c[:, None, None], t * c[:, None] + ((1 - c) * mean_gray)[:, None]
        mat = torch.where((op == 2)[:, None, None], sat, torch.where((op == 3)[:, None, None], hue, eye))
        a, t = mat @ a, (mat @ t[:, :, None]).squeeze(2)
    return a, t


class ColorJitterOp(Op):
    name, config, stage = "color_jitter", ColorJitter, 20

    def active(self, cfg) -> bool:
        return cfg.active

    def sample(self, cfg, n, size, height, width, g):
        on = (torch.rand(n, generator=g) < cfg.p) if cfg.active else torch.zeros(n, dtype=torch.bool)
        factors = torch.stack([uniform(*r, n, g) for r in (cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue)],
                              1).float()
        order = torch.rand((n, 4), generator=g).argsort(1)
        return {"jitter_on": on, "factors": factors, "order": order}

    def apply(self, x, cfg, p, ctx):
        if ctx.masked:
            return color_jitter_masked(x, p.factors, p.order, p.jitter_on)
        return color_jitter_(x, ctx.host.factors, ctx.host.order, ctx.host.jitter_on)

    def affine(self, a, t, mu, cfg, p, ctx):
        return jitter_affine(a, t, mu, p.factors, p.order, p.jitter_on)
