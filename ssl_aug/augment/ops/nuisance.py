"""Nuisance patch recolouring: a subgroup-changing, class-keeping transform (CLAMP-style model patching).

Pixels within `tol` (max over channels, on [0, 1]) of any colour of the nuisance `palette` (by default
the embedded data set's patch colours, ssl_aug.data.embedded.PALETTE) are repainted, with probability p
per image, in one palette colour drawn per image: the patch moves to another group, the structure (the
class) is untouched. Works after the crop (the patch's interior keeps its exact colour), before colour
ops (stage 5). Nested table `nuisance = {p, tol, palette}`. Parameters: nuisance_on (N,) bool,
nuisance_to (N,) int64 palette index (only drawn when p > 0, so views without the op keep their
parameters). Example: `augment.nuisance = { p = 0.8 }`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ssl_aug.augment.ops.base import Op, constant, prob
from ssl_aug.data.embedded import PALETTE
from ssl_aug.errors import SslAugError


def _default_palette() -> list:
    return [[v / 255 for v in rgb] for rgb in PALETTE.tolist()]


@dataclass
class Nuisance:
    """With probability p, recolour the nuisance-palette pixels of an image to one palette colour."""
    p: float = 0.0
    tol: float = 0.03
    palette: list = field(default_factory=_default_palette)

    def __post_init__(self):
        self.p = prob("nuisance.p", self.p)
        t = self.tol
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 <= t < 0.5:
            raise SslAugError(f"view spec: nuisance.tol={t!r} is not allowed; use a number in [0, 0.5)")
        self.tol = float(t)
        pal = self.palette
        ok = isinstance(pal, (list, tuple)) and len(pal) >= 2 and all(
            isinstance(c, (list, tuple)) and len(c) == 3
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1 for v in c) for c in pal)
        if not ok:
            raise SslAugError(f"view spec: nuisance.palette={pal!r} is not allowed; use >= 2 RGB colours [r, g, b] in [0, 1]")
        self.palette = [[float(v) for v in c] for c in pal]


def recolor_nuisance(x: torch.Tensor, palette: torch.Tensor, target: torch.Tensor, on: torch.Tensor,
                     tol: float = 0.03) -> torch.Tensor:
    """x (M,3,h,w) float in [0, 1], palette (G,3), target (M,) palette index, on (M,) bool -> new tensor
    where the palette-coloured pixels of the `on` images take colour palette[target]."""
    pal = palette.to(device=x.device, dtype=x.dtype)
    near = ((x[:, None] - pal[None, :, :, None, None]).abs().amax(2) <= tol).any(1, keepdim=True)  # (M,1,h,w)
    hit = near & on.to(x.device).view(-1, 1, 1, 1)
    return torch.where(hit, pal[target.to(x.device)][:, :, None, None], x)


class NuisanceOp(Op):
    name, config, stage = "nuisance", Nuisance, 5

    def sample(self, cfg, n, size, height, width, g):
        if cfg.p == 0:
            return {}
        return {"nuisance_on": torch.rand(n, generator=g) < cfg.p,
                "nuisance_to": torch.randint(0, len(cfg.palette), (n,), generator=g)}

    def apply(self, x, cfg, p, ctx):
        q = p if ctx.masked else ctx.host
        key = "nuisance_palette" + repr(cfg.palette)  # cached per palette and device: no upload per call
        palette = constant(key, x.device, x.dtype, lambda: torch.tensor(cfg.palette))
        return recolor_nuisance(x, palette, q.nuisance_to, q.nuisance_on, cfg.tol)
