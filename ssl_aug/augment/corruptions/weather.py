"""Weather corruptions (ImageNet-C parameters, as in the `imagecorruptions` package): float images
(N, 3, H, W) in [0, 1] -> corrupted floats; randomness from `generator` on the images' device.

Frost: the reference blends photographs of frost that it ships; this module does not reuse them and
synthesises a frost texture procedurally instead (`frost_texture`), so frost matches the reference in
its blend weights and in statistics, not pixel by pixel."""

from __future__ import annotations

import torch

import ssl_aug.augment.corruptions.filters as filters

SNOW = ((0.1, 0.3, 3, 0.5, 10, 4, 0.8), (0.2, 0.3, 2, 0.5, 12, 4, 0.7), (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
        (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65), (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55))
# snow: flake mean, flake std, zoom, threshold, streak radius, streak sigma, image weight
FROST = ((1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75))   # image weight, frost weight
FOG = ((1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4))          # fog strength, fractal decay
BRIGHTNESS = (0.1, 0.2, 0.3, 0.4, 0.5)                                   # added to HSV value
FROST_TINT = (0.80, 0.87, 0.93)   # RGB of the synthetic texture's ice (bluish white)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """OpenCV RGB2GRAY luma (N, 1, H, W)."""
    return 0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


def snow(x: torch.Tensor, severity: int, generator: torch.Generator, flakes=None, angle=None) -> torch.Tensor:
    """Zoomed, thresholded Gaussian flakes smeared along a random angle in [-135, -45] degrees, added twice
    (the layer and its 180-degree rotation) to an image brightened towards its luma. `flakes` (N, 1, H, W)
    normal draws with the severity's mean/std and `angle` (N,) may be given (reference tests)."""
    loc, scale, zoom, threshold, radius, sigma, weight = SNOW[severity - 1]
    n, _, h, w = x.shape
    if flakes is None:
        flakes = loc + scale * torch.randn((n, 1, h, w), generator=generator, device=x.device, dtype=x.dtype)
    if angle is None:
        angle = torch.rand(n, generator=generator, device=x.device, dtype=torch.float64) * 90 - 135
    layer = filters.clipped_zoom(flakes.to(x), zoom, full=True)   # smeared at the zoomed size, then cropped
    layer = torch.where(layer < threshold, torch.zeros_like(layer), layer).clamp(0, 1)
    layer = filters.motion_blur(layer, radius, sigma, torch.as_tensor(angle, dtype=torch.float64).cpu())
    layer = torch.floor(layer[..., :h, :w] * 255 + 0.5) / 255   # numpy rounds half to even; ties: measure zero
    x = weight * x + (1 - weight) * torch.maximum(x, _gray(x) * 1.5 + 0.5)
    return x + layer + layer.flip(-2, -1)


def frost_texture(n: int, h: int, w: int, generator: torch.Generator, device=None) -> torch.Tensor:
    """Synthetic frost (N, 3, H, W) in [0, 1]: a cloudy plasma-fractal base (decay 1.6) plus needle-like ice
    crystals (sparse seeds smeared along three random directions per image), tinted bluish white. Its mean
    and spread are close to those of the reference's frost photographs (channel means 0.55-0.70, std ~0.1)."""
    size = 2 ** (max(h, w, 2) - 1).bit_length()
    base = filters.plasma_fractal(n, size, 1.6, generator, device)[:, None, :h, :w].float()
    crystals = torch.zeros(n, 1, h, w, device=device)
    radius = max(2, round(0.06 * max(h, w)))
    for _ in range(3):
        seeds = (torch.rand((n, 1, h, w), generator=generator, device=device) < 0.06).float()
        angle = torch.rand(n, generator=generator, device=device, dtype=torch.float64) * 360 - 180
        crystals = torch.maximum(crystals, filters.motion_blur(seeds, radius, radius / 2, angle.cpu()))
    crystals = (crystals / crystals.flatten(1).amax(1).clamp_min(1e-6).view(n, 1, 1, 1)).sqrt()
    ice = (0.45 + 0.35 * base + 0.3 * crystals).clamp(0, 1)
    return ice * torch.tensor(FROST_TINT, device=device).view(1, 3, 1, 1)


def frost(x: torch.Tensor, severity: int, generator: torch.Generator, texture=None) -> torch.Tensor:
    """a * x + b * frost texture (`texture` (N, 3, H, W) in [0, 1] may be given; default `frost_texture`)."""
    a, b = FROST[severity - 1]
    if texture is None:
        texture = frost_texture(x.shape[0], x.shape[2], x.shape[3], generator, x.device)
    return a * x + b * texture.to(x)


def fog(x: torch.Tensor, severity: int, generator: torch.Generator, uniform=None) -> torch.Tensor:
    """Add a diamond-square fractal (one per image, shared by the channels), rescale by max / (max + c).
    `uniform(shape)` may supply the fractal's U[0, 1) draws (reference tests)."""
    strength, decay = FOG[severity - 1]
    n, _, h, w = x.shape
    side = max(h, w, 3)
    size = 1 if side == 0 else 2 ** (side - 1).bit_length()
    plasma = filters.plasma_fractal(n, size, decay, generator, x.device, uniform)[:, None, :h, :w].to(x)
    peak = x.flatten(1).amax(1).view(n, 1, 1, 1)
    return (x + strength * plasma) * peak / (peak + strength)


def brightness(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """HSV value + c (clipped), hue and saturation kept: RGB scaled by V' / V (black becomes grey V')."""
    c = BRIGHTNESS[severity - 1]
    v = x.amax(1, keepdim=True)
    v_new = (v + c).clamp(0, 1)
    return torch.where(v > 0, x * v_new / v.clamp_min(1e-12), v_new.expand_as(x))
