"""Blur corruptions (ImageNet-C parameters, as in the `imagecorruptions` package): float images
(N, 3, H, W) in [0, 1] -> corrupted floats; randomness from `generator` on the images' device."""

from __future__ import annotations

import numpy as np
import torch

import ssl_aug.augment.corruptions.filters as filters

DEFOCUS_BLUR = ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5))              # disk radius, alias blur
GLASS_BLUR = ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2))      # sigma, max shift, passes
MOTION_BLUR = ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15))                     # radius, sigma
ZOOM_BLUR = ((1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.02), (1, 1.26, 0.02), (1, 1.31, 0.03))  # arange


def defocus_blur(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """Correlation with an anti-aliased disk (OpenCV filter2D, reflect-101 borders)."""
    radius, alias = DEFOCUS_BLUR[severity - 1]
    return filters.filter2d(x, filters.disk_kernel(radius, alias))


def glass_blur(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """Gaussian blur, quantised to uint8, local pixel shuffles, Gaussian blur again. The shuffles are
    batched: in every pass each interior pixel takes the value of a random neighbour at offsets in
    [-d, d-1] (a gather), where the reference swaps pixels one after another in a Python loop (a swapped
    pixel can be carried on by later swaps). max(passes, passes * (d + 1) // 2) gathers give the
    reference's mean change from the clean image to within 13% at every severity."""
    sigma, delta, passes = GLASS_BLUR[severity - 1]
    y = (filters.gaussian_blur(x, sigma).clamp(0, 1) * 255).floor()
    n, c, h, w = y.shape
    rows = torch.arange(h, device=x.device).view(1, h, 1).expand(n, h, w)
    cols = torch.arange(w, device=x.device).view(1, 1, w).expand(n, h, w)
    inside = ((rows > delta) & (rows <= h - delta) & (cols > delta) & (cols <= w - delta))
    for _ in range(max(passes, passes * (delta + 1) // 2)):
        dy = torch.randint(-delta, delta, (n, h, w), generator=generator, device=x.device)
        dx = torch.randint(-delta, delta, (n, h, w), generator=generator, device=x.device)
        src_r = torch.where(inside, rows + dy, rows).clamp(0, h - 1)
        src_c = torch.where(inside, cols + dx, cols).clamp(0, w - 1)
        idx = (src_r * w + src_c).view(n, 1, h * w).expand(n, c, h * w)
        y = y.reshape(n, c, h * w).gather(2, idx).view(n, c, h, w)
    return filters.gaussian_blur(y / 255, sigma)


def motion_blur(x: torch.Tensor, severity: int, generator: torch.Generator, angle=None) -> torch.Tensor:
    """One-sided Gaussian smear along a random direction per image, angle ~ U(-45, 45) degrees (or `angle` (N,))."""
    radius, sigma = MOTION_BLUR[severity - 1]
    if angle is None:
        angle = torch.rand(x.shape[0], generator=generator, device=x.device, dtype=torch.float64) * 90 - 45
    return filters.motion_blur(x, radius, sigma, torch.as_tensor(angle, dtype=torch.float64).cpu())


def zoom_factors(severity: int) -> list[float]:
    """The zoom factors of a severity, exactly as numpy's arange makes them in the reference."""
    return [float(z) for z in np.arange(*ZOOM_BLUR[severity - 1])]


def zoom_blur(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """Mean of the image and its centre zoomed by each factor (linear interpolation, size kept)."""
    factors = zoom_factors(severity)
    out = x.clone()
    for z in factors:
        out += filters.clipped_zoom(x, z)
    return out / (len(factors) + 1)
