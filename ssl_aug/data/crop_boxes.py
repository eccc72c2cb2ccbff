"""torchvision's RandomResizedCrop box rule, batched: used by the view engine's crop op and by the
decoders that cut crops from the whole encoded image (ssl_aug.data.crop_decode)."""

from __future__ import annotations

import math

import torch

TRIES = 10  # torchvision's attempts before the central-crop fallback


def draws_per_box(tries: int = TRIES) -> int:
    """Uniform [0, 1) draws one box consumes: `tries` area fractions, `tries` log ratios, top and left."""
    return 2 * tries + 2


def sample_crop_boxes(n: int, height: int, width: int, scale: tuple, ratio: tuple, g: torch.Generator,
                      tries: int = TRIES) -> torch.Tensor:
    """torchvision RandomResizedCrop.get_params for n images at once: (n, 4) int64 [top, left, h, w].
    Up to `tries` draws of (area fraction, log aspect ratio) per image; the first that fits is used,
    else the central crop with the ratio clamped (as torchvision)."""
    u = torch.rand(n * draws_per_box(tries), generator=g, dtype=torch.float64)
    return boxes_from_draws(u[None], torch.tensor([height]), torch.tensor([width]), scale, ratio, tries)[0]


def boxes_from_draws(u: torch.Tensor, height: torch.Tensor, width: torch.Tensor, scale: tuple, ratio: tuple,
                     tries: int = TRIES) -> torch.Tensor:
    """The box rule on given draws. u: (B, n * draws_per_box) float64 uniform [0, 1), laid out as n x tries
    area draws, then n x tries ratio draws, then n x (top, left); height, width: (B,) int64 image sides
    -> (B, n, 4) int64 [top, left, h, w] (n boxes per image)."""
    b, n = u.shape[0], u.shape[1] // draws_per_box(tries)
    hgt, wid = height.to(torch.float64).view(b, 1, 1), width.to(torch.float64).view(b, 1, 1)
    nt = n * tries
    target = u[:, :nt].reshape(b, n, tries) * (scale[1] - scale[0]) + scale[0]
    target = target * (hgt * wid)
    lr = (math.log(ratio[0]), math.log(ratio[1]))
    aspect = torch.exp(u[:, nt:2 * nt].reshape(b, n, tries) * (lr[1] - lr[0]) + lr[0])
    w = torch.sqrt(target * aspect).round()
    h = torch.sqrt(target / aspect).round()
    ok = (w > 0) & (w <= wid) & (h > 0) & (h <= hgt)
    first = ok.to(torch.uint8).argmax(2, keepdim=True)
    w, h = w.gather(2, first).squeeze(2), h.gather(2, first).squeeze(2)  # (B, n) float64
    pos = u[:, 2 * nt:].reshape(b, n, 2)
    hgt, wid = hgt.view(b, 1), wid.view(b, 1)
    top = (pos[..., 0] * (hgt - h + 1)).floor()
    left = (pos[..., 1] * (wid - w + 1)).floor()
    in_ratio = wid / hgt  # fallback: central crop (torchvision semantics)
    fw = torch.where(in_ratio < min(ratio), wid, torch.where(in_ratio > max(ratio), (hgt * max(ratio)).round(), wid))
    fh = torch.where(in_ratio < min(ratio), (wid / min(ratio)).round(), hgt)
    bad = ~ok.any(2)
    h, w = torch.where(bad, fh, h), torch.where(bad, fw, w)
    top = torch.where(bad, ((hgt - fh) / 2).floor(), top)
    left = torch.where(bad, ((wid - fw) / 2).floor(), left)
    return torch.stack([top, left, h, w], 2).long()
