"""Digital corruptions (ImageNet-C parameters, as in the `imagecorruptions` package), plus saturate (one
of its held-out validation corruptions): float images (N, 3, H, W) in [0, 1] -> corrupted floats."""

from __future__ import annotations

from functools import lru_cache

import torch

import ssl_aug.augment.corruptions.filters as filters

CONTRAST = (0.4, 0.3, 0.2, 0.1, 0.05)                            # factor towards the channel means
ELASTIC = (250 * 0.05, 250 * 0.065, 250 * 0.085, 250 * 0.1, 250 * 0.12)  # displacement gain alpha
PIXELATE = (0.6, 0.5, 0.4, 0.3, 0.25)                            # downscale factor
JPEG = (25, 18, 15, 10, 7)                                       # JPEG quality
SATURATE = ((0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2))     # HSV saturation * a + b


def contrast(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """(x - mean) * c + mean, means per image and channel."""
    c = CONTRAST[severity - 1]
    m = x.mean(dim=(2, 3), keepdim=True)
    return (x - m) * c + m


def elastic_transform(x: torch.Tensor, severity: int, generator: torch.Generator, fields=None) -> torch.Tensor:
    """Resample at (row + dy, col + dx): dx, dy = alpha * Gaussian-smoothed (sigma 1% of the size, truncate 3,
    symmetric borders) U(-0.5% H, 0.5% H) fields; bilinear, symmetric borders. `fields` = (ux, uy) (N, H, W)
    U[0, 1) draws may be given (reference tests)."""
    alpha = ELASTIC[severity - 1]
    n, _, h, w = x.shape
    reach = h * 0.005
    if fields is None:
        fields = [torch.rand((n, h, w), generator=generator, device=x.device, dtype=torch.float64) for _ in range(2)]
    sigma = (h * 0.01, w * 0.01)
    dx, dy = [filters.gaussian_blur((-reach + 2 * reach * u.to(x.device, torch.float64))[:, None], sigma,
                                    "symmetric", truncate=3.0)[:, 0].float() * alpha for u in fields]
    rows = torch.arange(h, device=x.device, dtype=torch.float32).view(1, h, 1) + dy
    cols = torch.arange(w, device=x.device, dtype=torch.float32).view(1, 1, w) + dx
    return filters.sample_bilinear_symmetric(x, rows, cols)


@lru_cache(maxsize=64)
def _box_matrix(n_out: int, n_in: int, device) -> torch.Tensor:
    """PIL's BOX reduction along one axis (n_out, n_in): output j averages the inputs whose pixel centre
    lies in (j * s, (j + 1) * s], s = n_in / n_out."""
    s = n_in / n_out
    centre = torch.arange(n_in, dtype=torch.float64) + 0.5
    lo = torch.arange(n_out, dtype=torch.float64)[:, None] * s
    m = ((centre[None] > lo) & (centre[None] <= lo + s)).double()
    return (m / m.sum(1, keepdim=True).clamp_min(1)).float().to(device)


@lru_cache(maxsize=64)
def _nearest_index(n_out: int, n_in: int, device) -> torch.Tensor:
    """PIL's NEAREST source index per output pixel: int(x) of x = s / 2, s / 2 + s, ... (s = n_in / n_out),
    accumulated in float64 as Pillow's affine loop does (exact-boundary cases round the same way)."""
    step, pos, out = n_in / n_out, n_in / n_out * 0.5, []
    for _ in range(n_out):
        out.append(min(int(pos), n_in - 1))
        pos += step
    return torch.tensor(out, device=device)


def pixelate(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """PIL resize to int(size * c) with the BOX filter (width pass, then height pass, each rounded to 8 bits),
    then back with NEAREST."""
    c = PIXELATE[severity - 1]
    n, ch, h, w = x.shape
    sh, sw = max(1, int(h * c)), max(1, int(w * c))
    y = torch.floor(x * 255 @ _box_matrix(sw, w, x.device).T + 0.5)
    y = torch.floor(_box_matrix(sh, h, x.device) @ y + 0.5)
    rows, cols = _nearest_index(h, sh, x.device), _nearest_index(w, sw, x.device)   # cached per size
    return y.index_select(2, rows).index_select(3, cols) / 255


def jpeg_compression(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """Encode and decode at JPEG quality c with torchvision.io (libjpeg; a list of images per call)."""
    from torchvision.io import decode_jpeg, encode_jpeg

    quality = JPEG[severity - 1]
    u8 = (x.clamp(0, 1) * 255).floor().to(torch.uint8).cpu()
    data = encode_jpeg(list(u8), quality=quality)
    out = torch.stack(decode_jpeg(data))
    return out.to(x.device, x.dtype) / 255


def saturate(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """HSV saturation S' = clip(S * a + b), hue and value kept. Per channel c' = V - S'/S * (V - c); grey
    pixels (S = 0, hue 0 in skimage) become (V, V (1 - S'), V (1 - S')). Computed in float64 (the ratio
    S'/S amplifies float32 rounding); returns float64."""
    a, b = SATURATE[severity - 1]
    x = x.double()
    v = x.amax(1, keepdim=True)
    delta = v - x.amin(1, keepdim=True)
    s = torch.where(v > 0, delta / v.clamp_min(1e-12), torch.zeros_like(v))
    s_new = (s * a + b).clamp(0, 1)
    coloured = v - s_new / s.clamp_min(1e-12) * (v - x)
    grey = torch.cat([v, v * (1 - s_new), v * (1 - s_new)], 1)
    return torch.where(delta > 0, coloured, grey)
