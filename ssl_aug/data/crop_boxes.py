"""torchvision's RandomResizedCrop box rule, batched: used by the view engine's crop op and by the
decoders that cut crops from the whole encoded image (ssl_aug.data.crop_decode)."""

from __future__ import annotations

import math

import torch


def uniform(lo: float, hi: float, shape, g: torch.Generator) -> torch.Tensor:
    """Uniform draws in [lo, hi] (float64; the same arithmetic as the view engine's ops)."""
    return torch.rand(shape, generator=g, dtype=torch.float64).mul_(hi - lo).add_(lo)


def sample_crop_boxes(n: int, height: int, width: int, scale: tuple, ratio: tuple, g: torch.Generator,
                      tries: int = 10) -> torch.Tensor:
    """torchvision RandomResizedCrop.get_params for n images at once: (n, 4) int64 [top, left, h, w].
    Up to `tries` draws of (area fraction, log aspect ratio) per image; the first that fits is used,
    else the central crop with the ratio clamped (as torchvision)."""
    area = height * width
    target = uniform(scale[0], scale[1], (n, tries), g) * area
    aspect = torch.exp(uniform(math.log(ratio[0]), math.log(ratio[1]), (n, tries), g))
    w = torch.sqrt(target * aspect).round()
    h = torch.sqrt(target / aspect).round()
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = ok.to(torch.uint8).argmax(1, keepdim=True)
    w, h = w.gather(1, first).squeeze(1).long(), h.gather(1, first).squeeze(1).long()
    u = torch.rand((n, 2), generator=g, dtype=torch.float64)
    top = (u[:, 0] * (height - h + 1)).floor().long()
    left = (u[:, 1] * (width - w + 1)).floor().long()
    in_ratio = width / height  # fallback: central crop (torchvision semantics)
    if in_ratio < min(ratio):
        fw, fh = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fh, fw = height, int(round(height * max(ratio)))
    else:
        fw, fh = width, height
    bad = ~ok.any(1)
    h, w = torch.where(bad, fh, h), torch.where(bad, fw, w)
    top = torch.where(bad, (height - fh) // 2, top)
    left = torch.where(bad, (width - fw) // 2, left)
    return torch.stack([top, left, h, w], 1)
