"""Solarize (torchvision RandomSolarize): with probability p, pixels >= threshold become 1 - pixel.
Nested table `solarize = {p, threshold}`. Parameters: solarize (N,) bool."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ssl_aug.augment.ops.base import Op, prob
from ssl_aug.errors import SslAugError


@dataclass
class Solarize:
    """With probability p, pixels >= threshold (on [0, 1]) become 1 - pixel."""
    p: float = 0.0
    threshold: float = 0.5

    def __post_init__(self):
        self.p = prob("solarize.p", self.p)
        t = self.threshold
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 <= t <= 1.0:
            raise SslAugError(f"view spec: solarize.threshold={t!r} is not allowed; use a number in [0, 1]")
        self.threshold = float(t)


def solarize_(x: torch.Tensor, on: torch.Tensor, threshold: float) -> torch.Tensor:
    """In place: where on (M,) and pixel >= threshold, pixel -> 1 - pixel (torchvision solarize).
    `on` on the host: skipped when no image is on; on the device: no host read."""
    if on.device.type == "cpu" and not bool(on.any()):
        return x
    thr = torch.where(on.to(x.device), threshold, math.inf).to(torch.float32).view(-1, 1, 1, 1)
    return x.addcmul_(x >= thr, 1.0 - 2.0 * x)  # x + s (1 - 2x): arithmetic, not torch.where


class SolarizeOp(Op):
    name, config, stage = "solarize", Solarize, 50

    def sample(self, cfg, n, size, height, width, g):
        return {"solarize": torch.rand(n, generator=g) < cfg.p}

    def apply(self, x, cfg, p, ctx):
        return solarize_(x, p.solarize if ctx.masked else ctx.host.solarize, cfg.threshold)
