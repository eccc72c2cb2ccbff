"""Random grayscale (torchvision RandomGrayscale: luma 0.2989 r + 0.587 g + 0.114 b in all three channels).
Flat view field: grayscale_p. Parameters: gray (N,) bool."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ssl_aug.augment.ops.base import Op, index_rows, prob
from ssl_aug.augment.ops.functional import luma, luma_rows


@dataclass
class Grayscale:
    grayscale_p: float = 0.2

    def __post_init__(self):
        self.grayscale_p = prob("grayscale_p", self.grayscale_p)


def grayscale_(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """In place: images where mask (M,) is True become 3-channel luma (torchvision rgb_to_grayscale)."""
    idx = index_rows(mask)
    if idx.numel():
        idx = idx.to(x.device, non_blocking=True)
        x.index_copy_(0, idx, luma(x.index_select(0, idx)).expand(-1, 3, -1, -1))
    return x


def gray_affine(a: torch.Tensor, t: torch.Tensor, gray: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fast mode: compose the grayscale map (rows = luma weights) onto A (M,3,3), t (M,3) where gray (M,)."""
    ones_w = luma_rows(a.device)
    g = gray.to(a.device)[:, None, None]
    return torch.where(g, ones_w @ a, a), torch.where(g[:, :, 0], (ones_w @ t[:, :, None]).squeeze(2), t)


class GrayscaleOp(Op):
    name, config, stage, nested = "grayscale", Grayscale, 30, False

    def active(self, cfg) -> bool:
        return cfg.grayscale_p > 0

    def sample(self, cfg, n, size, height, width, g):
        return {"gray": torch.rand(n, generator=g) < cfg.grayscale_p}

    def apply(self, x, cfg, p, ctx):
        if ctx.masked:
            return torch.where(p.gray.view(-1, 1, 1, 1), luma(x), x)
        return grayscale_(x, ctx.host.gray)

    def affine(self, a, t, mu, cfg, p, ctx):
        return gray_affine(a, t, p.gray)

    def probe(self) -> dict:
        return {"grayscale_p": 1.0}

    def off(self) -> dict:
        return {"grayscale_p": 0.0}
