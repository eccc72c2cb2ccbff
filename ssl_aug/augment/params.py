"""Per-image view parameters, sampled on the CPU from a torch.Generator separately from being applied:
they can be logged, inspected and replayed (applying the same parameters gives the same views)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from ssl_aug.augment.spec import ViewSpec

OPS = ("brightness", "contrast", "saturation", "hue")  # ids 0..3 used in `order`


@dataclass
class ViewParams:
    """Parameters of one view for a batch of N images (all tensors, first dim N).

    box (N,4) int64 [top, left, height, width] in input pixels; flip (N,) bool (after the crop);
    jitter_on (N,) bool; factors (N,4) float32 [brightness, contrast, saturation, hue shift in turns];
    order (N,4) int64, order[n, k] = id of the op applied k-th (0 b, 1 c, 2 s, 3 h);
    gray (N,) bool; blur_on (N,) bool; sigma (N,) float32; solarize (N,) bool;
    policy_seed (N,) int64: seed of the optional kornia policy (same value for the whole view).
    """
    box: torch.Tensor
    flip: torch.Tensor
    jitter_on: torch.Tensor
    factors: torch.Tensor
    order: torch.Tensor
    gray: torch.Tensor
    blur_on: torch.Tensor
    sigma: torch.Tensor
    solarize: torch.Tensor
    policy_seed: torch.Tensor

    def to(self, device, non_blocking: bool = False) -> "ViewParams":
        return ViewParams(**{k: v.to(device, non_blocking=non_blocking) for k, v in self.as_dict().items()})

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def __getitem__(self, rows) -> "ViewParams":
        """Parameters of a subset of the images (slice or index tensor)."""
        return ViewParams(**{k: v[rows] for k, v in self.as_dict().items()})

    def __len__(self) -> int:
        return self.box.shape[0]

    @staticmethod
    def cat(params: list["ViewParams"]) -> "ViewParams":
        """Concatenate along the batch dimension (view-major)."""
        return ViewParams(**{f.name: torch.cat([getattr(p, f.name) for p in params])
                             for f in dataclasses.fields(ViewParams)})


def _uniform(lo: float, hi: float, shape, g: torch.Generator) -> torch.Tensor:
    return torch.rand(shape, generator=g, dtype=torch.float64).mul_(hi - lo).add_(lo)


def sample_crop_boxes(n: int, height: int, width: int, scale: tuple, ratio: tuple, g: torch.Generator,
                      tries: int = 10) -> torch.Tensor:
    """torchvision RandomResizedCrop.get_params for n images at once: (n, 4) int64 [top, left, h, w].
    Up to `tries` draws of (area fraction, log aspect ratio) per image; the first that fits is used,
    else the central crop with the ratio clamped (as torchvision)."""
    area = height * width
    target = _uniform(scale[0], scale[1], (n, tries), g) * area
    aspect = torch.exp(_uniform(math.log(ratio[0]), math.log(ratio[1]), (n, tries), g))
    w = torch.sqrt(target * aspect).round()
    h = torch.sqrt(target / aspect).round()
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = ok.to(torch.uint8).argmax(1, keepdim=True)
    w, h = w.gather(1, first).squeeze(1).long(), h.gather(1, first).squeeze(1).long()
    u = torch.rand((n, 2), generator=g, dtype=torch.float64)
    top = (u[:, 0] * (height - h + 1)).floor().long()
    left = (u[:, 1] * (width - w + 1)).floor().long()
    # fallback: central crop (torchvision semantics)
    in_ratio = width / height
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


def sample_view_params(spec: ViewSpec, n: int, height: int, width: int, g: torch.Generator) -> ViewParams:
    """Draw the parameters of one view of `spec` for n images of size (height, width) (CPU tensors)."""
    box = sample_crop_boxes(n, height, width, spec.scale, spec.ratio, g)
    flip = torch.rand(n, generator=g) < spec.flip_p
    cj = spec.color_jitter
    jitter_on = (torch.rand(n, generator=g) < cj.p) if cj.active else torch.zeros(n, dtype=torch.bool)
    factors = torch.stack([_uniform(*r, n, g) for r in (cj.brightness, cj.contrast, cj.saturation, cj.hue)],
                          1).float()
    order = torch.rand((n, 4), generator=g).argsort(1)
    gray = torch.rand(n, generator=g) < spec.grayscale_p
    blur_on = torch.rand(n, generator=g) < spec.blur.p
    sigma = _uniform(*spec.blur.sigma, n, g).float()
    solarize = torch.rand(n, generator=g) < spec.solarize.p
    seed = torch.randint(0, 2 ** 62, (1,), generator=g).expand(n).clone()
    return ViewParams(box, flip, jitter_on, factors, order, gray, blur_on, sigma, solarize, seed)
