"""Random resized crop + horizontal flip (torchvision RandomResizedCrop + RandomHorizontalFlip), as one
batched grid_sample. Flat view fields: size, scale, ratio, flip_p. Parameters: box (N,4) int64
[top, left, height, width] in input pixels; flip (N,) bool (after the crop). Boxes that are the whole
size x size input (crops already cut by the decoder, augment.crop_views) skip the resample: only the flip."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ssl_aug.augment.ops.base import Op, pair, prob
from ssl_aug.data.crop_boxes import sample_crop_boxes  # noqa: F401 (the one implementation of the rule)
from ssl_aug.errors import SslAugError


@dataclass
class CropFlip:
    """Output size (pixels), crop area fraction `scale`, aspect ratio `ratio`, flip probability."""
    size: int = 32
    scale: tuple = (0.08, 1.0)
    ratio: tuple = (3 / 4, 4 / 3)
    flip_p: float = 0.5

    def __post_init__(self):
        s = self.size
        if isinstance(s, bool) or not isinstance(s, int) or s < 1:
            raise SslAugError(f"view spec: size={s!r} is not allowed; use an integer >= 1 (pixels)")
        self.scale = pair("scale", self.scale, 0.0, 1.0, lo_open=True)
        self.ratio = pair("ratio", self.ratio, 0.0, lo_open=True)
        self.flip_p = prob("flip_p", self.flip_p)


def crop_grid(box: torch.Tensor, flip: torch.Tensor, size: int, height: int, width: int) -> torch.Tensor:
    """Sampling grid (M, size, size, 2) for grid_sample(align_corners=True) that reproduces
    torchvision resized_crop(box, size, bilinear, antialias=False) followed by an optional h-flip.
    box (M,4) int64 [top, left, h, w]; flip (M,) bool. Source coordinates follow PyTorch's
    upsample_bilinear (half-pixel centres, clamped to the box)."""
    b = box.to(torch.float64)
    k = torch.arange(size, device=box.device, dtype=torch.float64) + 0.5

    def axis(start, extent, full):
        src = (extent / size)[:, None] * k - 0.5
        src = torch.minimum(src.clamp_(min=0.0), (extent - 1)[:, None]) + start[:, None]
        return src * (2.0 / max(full - 1, 1)) - 1.0

    ys = axis(b[:, 0], b[:, 2], height).float()
    xs = axis(b[:, 1], b[:, 3], width)
    xs = torch.where(flip[:, None], xs.flip(1), xs).float()
    m = box.shape[0]
    return torch.stack([xs[:, None, :].expand(m, size, size), ys[:, :, None].expand(m, size, size)], -1)


def resized_crops(x: torch.Tensor, box: torch.Tensor, flip: torch.Tensor, size: int) -> torch.Tensor:
    """V crops of every image in one grid_sample. x (N,3,H,W) float; box (V*N,4), flip (V*N,) in
    view-major order; returns (V*N, 3, size, size) contiguous, view-major."""
    n, c, height, width = x.shape
    v = box.shape[0] // n
    grid = crop_grid(box, flip, size, height, width)  # (V*N, s, s, 2)
    grid = grid.view(v, n, size, size, 2).transpose(0, 1).reshape(n, v * size, size, 2)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)
    if v == 1:
        return out
    return out.view(n, c, v, size, size).permute(2, 0, 1, 3, 4).reshape(v * n, c, size, size)


def _whole_images(x: torch.Tensor, size: int, host_box: torch.Tensor | None) -> bool:
    """True when every box (host copy, no device read) is the whole size x size input, one per image: the
    resample is the identity (what views_from_crops asks for), so grid_sample is skipped."""
    n, _, height, width = x.shape
    if host_box is None or height != size or width != size or host_box.shape[0] != n:
        return False
    return bool((host_box[:, :2] == 0).all() and (host_box[:, 2:] == size).all())


class Crop(Op):
    """Always first (stage 0): maps the (N,3,H,W) input to (V*N,3,size,size) crops, V = rows / N."""
    name, config, stage, nested = "crop", CropFlip, 0, False

    def active(self, cfg) -> bool:
        return True

    def sample(self, cfg, n, size, height, width, g):
        box = sample_crop_boxes(n, height, width, cfg.scale, cfg.ratio, g)
        return {"box": box, "flip": torch.rand(n, generator=g) < cfg.flip_p}

    def apply(self, x, cfg, p, ctx):
        dev = x.device
        flip = p.flip.to(dev, non_blocking=True)
        if _whole_images(x, cfg.size, ctx.host.box if ctx.host is not None else None):
            return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)  # crops cut by the decoder: the flip only
        return resized_crops(x, p.box.to(dev, non_blocking=True), flip, cfg.size)

    def probe(self) -> dict:
        return {"scale": (0.25, 0.25), "ratio": (1.0, 1.0)}

    def off(self) -> dict:
        return {"scale": (1.0, 1.0), "ratio": (1.0, 1.0), "flip_p": 0.0}
