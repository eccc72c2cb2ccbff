"""Batch mixing: MixUp, CutMix, CutOut with per-image parameters from a CPU torch.Generator.

Each returns `Mixed(images, targets, lam, perm)`: images (N,C,H,W) float; targets (N,K) soft labels
whose rows sum to 1 (None when no labels were given); lam (N,) weight of each image's own content;
perm (N,) the partner index (identity for CutOut)."""

from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np
import torch

from ssl_aug.errors import SslAugError


class Mixed(NamedTuple):
    images: torch.Tensor
    targets: Optional[torch.Tensor]
    lam: torch.Tensor
    perm: torch.Tensor


def _gen(generator):
    return generator if generator is not None else torch.Generator().manual_seed(int(torch.randint(0, 2 ** 62, (1,))))


def _beta(alpha: float, n: int, g: torch.Generator) -> torch.Tensor:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0:
        raise SslAugError(f"mix: alpha={alpha!r} is not allowed; use a number > 0")
    seed = int(torch.randint(0, 2 ** 62, (1,), generator=g))
    return torch.from_numpy(np.random.default_rng(seed).beta(alpha, alpha, n)).float()


def _soft(labels, num_classes, n):
    if labels is None:
        return None
    if labels.ndim == 1:
        if num_classes is None:
            raise SslAugError("mix: integer labels need num_classes; pass num_classes=K or one-hot (N, K) labels")
        return torch.nn.functional.one_hot(labels.long(), num_classes).float()
    if labels.ndim == 2 and labels.shape[0] == n:
        return labels.float()
    raise SslAugError(f"mix: labels of shape {tuple(labels.shape)} are not allowed; use (N,) ints or (N, K)")


def _prep(images, labels, num_classes):
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise SslAugError("mix: images must be a (N, C, H, W) tensor")
    x = images if images.is_floating_point() else images.float()
    return x, _soft(labels, num_classes, x.shape[0])


def _mix_targets(y, lam, perm):
    if y is None:
        return None
    lam = lam.to(y.device)[:, None]
    return y * lam + y[perm] * (1 - lam)


def mixup(images: torch.Tensor, labels: Optional[torch.Tensor] = None, alpha: float = 1.0,
          generator: Optional[torch.Generator] = None, num_classes: Optional[int] = None) -> Mixed:
    """x_n <- lam_n x_n + (1 - lam_n) x_perm(n), lam_n ~ Beta(alpha, alpha) per image; same for labels."""
    x, y = _prep(images, labels, num_classes)
    g = _gen(generator)
    n = x.shape[0]
    lam = _beta(alpha, n, g)
    perm = torch.randperm(n, generator=g)
    lam_d, perm_d = lam.to(x.device), perm.to(x.device)
    w = lam_d.view(n, 1, 1, 1).to(x.dtype)
    out = x * w + x[perm_d] * (1 - w)
    return Mixed(out, _mix_targets(y, lam_d, perm_d), lam_d, perm_d)


def _box_mask(h: int, w: int, top, left, bh, bw, device) -> torch.Tensor:
    """(N,1,H,W) bool, True inside each image's box [top, top+bh) x [left, left+bw)."""
    r = torch.arange(h, device=device)[None, :]
    c = torch.arange(w, device=device)[None, :]
    top, left, bh, bw = (t.to(device)[:, None] for t in (top, left, bh, bw))
    rows = (r >= top) & (r < top + bh)
    cols = (c >= left) & (c < left + bw)
    return (rows[:, :, None] & cols[:, None, :])[:, None]


def _centred_box(n, h, w, ch, cw, g):
    """Boxes of size (ch, cw) (N,) centred uniformly in the image, clipped: top, left, height, width."""
    cy = (torch.rand(n, generator=g) * h).long()
    cx = (torch.rand(n, generator=g) * w).long()
    y0, y1 = (cy - ch // 2).clamp(0, h), (cy + ch - ch // 2).clamp(0, h)
    x0, x1 = (cx - cw // 2).clamp(0, w), (cx + cw - cw // 2).clamp(0, w)
    return y0, x0, y1 - y0, x1 - x0


def cutmix(images: torch.Tensor, labels: Optional[torch.Tensor] = None, alpha: float = 1.0,
           generator: Optional[torch.Generator] = None, num_classes: Optional[int] = None) -> Mixed:
    """Paste a box of area ~(1 - lam) from the partner image (lam ~ Beta(alpha, alpha)), box centre
    uniform and clipped at the border; lam is recomputed from the pasted area, labels mixed by area."""
    x, y = _prep(images, labels, num_classes)
    g = _gen(generator)
    n, _, h, w = x.shape
    lam0 = _beta(alpha, n, g)
    cut = torch.sqrt(1.0 - lam0)
    top, left, bh, bw = _centred_box(n, h, w, (cut * h).long(), (cut * w).long(), g)
    perm = torch.randperm(n, generator=g)
    lam = 1.0 - (bh * bw).float() / (h * w)
    mask = _box_mask(h, w, top, left, bh, bw, x.device)
    perm_d, lam_d = perm.to(x.device), lam.to(x.device)
    out = torch.where(mask, x[perm_d], x)
    return Mixed(out, _mix_targets(y, lam_d, perm_d), lam_d, perm_d)


def cutout(images: torch.Tensor, labels: Optional[torch.Tensor] = None, size: int = 8,
           generator: Optional[torch.Generator] = None, num_classes: Optional[int] = None,
           value: float = 0.0) -> Mixed:
    """Zero (or `value`) a size x size patch per image, centre uniform, clipped at the border (DeVries &
    Taylor). Labels are unchanged; lam is the kept fraction of each image."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise SslAugError(f"cutout: size={size!r} is not allowed; use an integer >= 1 (pixels)")
    x, y = _prep(images, labels, num_classes)
    g = _gen(generator)
    n, _, h, w = x.shape
    full = torch.full((n,), size, dtype=torch.long)
    top, left, bh, bw = _centred_box(n, h, w, full, full, g)
    mask = _box_mask(h, w, top, left, bh, bw, x.device)
    out = x.masked_fill(mask, value)
    lam = (1.0 - (bh * bw).float() / (h * w)).to(x.device)
    return Mixed(out, y, lam, torch.arange(n, device=x.device))
