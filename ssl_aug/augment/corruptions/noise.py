"""Noise corruptions (ImageNet-C parameters, as in the `imagecorruptions` package). Each function maps
float images (N, 3, H, W) in [0, 1] to corrupted floats (clipped to [0, 1] by the caller), drawing its
randomness from `generator` (on the images' device)."""

from __future__ import annotations

import torch

GAUSSIAN_NOISE = (0.08, 0.12, 0.18, 0.26, 0.38)   # standard deviation
SHOT_NOISE = (60, 25, 12, 5, 3)                   # photons per unit intensity (Poisson rate scale)
IMPULSE_NOISE = (0.03, 0.06, 0.09, 0.17, 0.27)    # fraction of values set to 0 or 1


def gaussian_noise(x: torch.Tensor, severity: int, generator: torch.Generator, noise=None) -> torch.Tensor:
    """x + N(0, c^2) per value; `noise` (N, 3, H, W) standard normal draws may be given (reference tests)."""
    c = GAUSSIAN_NOISE[severity - 1]
    if noise is None:
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x + c * noise.to(x)


def shot_noise(x: torch.Tensor, severity: int, generator: torch.Generator, counts=None) -> torch.Tensor:
    """Poisson(x * c) / c per value; `counts` may be given (reference tests)."""
    c = SHOT_NOISE[severity - 1]
    if counts is None:
        counts = torch.poisson(x * c, generator=generator)
    return counts.to(x) / c


def impulse_noise(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """Salt and pepper (skimage random_noise 's&p'): each value is replaced with probability c, by 1 or 0
    with probability 1/2 each."""
    c = IMPULSE_NOISE[severity - 1]
    u = torch.rand(x.shape, generator=generator, device=x.device)
    salt = (u <= c / 2).to(x.dtype)   # one draw: u <= c replaces (probability c), u <= c / 2 half of those by 1
    return torch.where(u <= c, salt, x)
