"""Batched building blocks of the corruptions, all on float (N, C, H, W) tensors on any device: padding by
index (scipy/OpenCV border modes), separable Gaussian blur, the defocus disk kernel, FFT correlation,
motion blur (edge-clamped shifts as one kernel per image), linear-zoom matrices (scipy.ndimage.zoom,
order 1), bilinear sampling with symmetric borders (scipy.ndimage.map_coordinates, order 1, mode
'reflect') and the diamond-square plasma fractal."""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F


def border_index(n: int, pad: int, mode: str, device=None) -> torch.Tensor:
    """Source rows (n + 2*pad,) of a padded axis of length n. mode: "edge" (scipy 'nearest', OpenCV
    REPLICATE), "symmetric" (scipy 'reflect': d c b a | a b c d), "reflect101" (OpenCV default,
    torch 'reflect': d c b | a b c d)."""
    i = torch.arange(-pad, n + pad, device=device)
    if mode == "edge" or n == 1:
        return i.clamp(0, n - 1)
    period = 2 * n if mode == "symmetric" else 2 * n - 2
    i = i.remainder(period)
    if mode == "symmetric":
        return torch.where(i >= n, period - 1 - i, i)
    return torch.where(i >= n, period - i, i)


def pad2d(x: torch.Tensor, ph: int, pw: int, mode: str) -> torch.Tensor:
    """Pad the last two dims of x by (ph, pw) on each side with `border_index` semantics (any pad size)."""
    h, w = x.shape[-2:]
    x = x.index_select(-2, border_index(h, ph, mode, x.device))
    return x.index_select(-1, border_index(w, pw, mode, x.device))


def gaussian_taps(sigma: float, truncate: float = 4.0, device=None, dtype=torch.float64) -> torch.Tensor:
    """scipy.ndimage.gaussian_filter1d weights: radius int(truncate*sigma + 0.5), exp(-x^2 / 2 sigma^2), sum 1."""
    radius = int(truncate * float(sigma) + 0.5)
    x = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    k = torch.exp(-0.5 * (x / float(sigma)) ** 2) if sigma > 0 else (x == 0).to(dtype)
    return k / k.sum()


def separable(x: torch.Tensor, ky: torch.Tensor, kx: torch.Tensor, mode: str) -> torch.Tensor:
    """Correlate the last two dims of x (N, C, H, W) with 1-D taps ky (rows) then kx (columns)."""
    n, c, h, w = x.shape
    ky, kx = ky.to(x), kx.to(x)
    y = pad2d(x.reshape(n * c, 1, h, w), ky.numel() // 2, kx.numel() // 2, mode)
    y = F.conv2d(y, ky.view(1, 1, -1, 1))
    y = F.conv2d(y, kx.view(1, 1, 1, -1))
    return y.view(n, c, h, w)


def gaussian_blur(x: torch.Tensor, sigma, mode: str = "edge", truncate: float = 4.0) -> torch.Tensor:
    """skimage.filters.gaussian per channel (scipy gaussian_filter, default mode 'nearest' = "edge");
    sigma: one value or (sigma_rows, sigma_cols)."""
    sy, sx = (sigma, sigma) if not isinstance(sigma, (tuple, list)) else sigma
    return separable(x, gaussian_taps(sy, truncate, x.device), gaussian_taps(sx, truncate, x.device), mode)


def cv2_gaussian_taps(ksize: int, sigma: float) -> torch.Tensor:
    """OpenCV getGaussianKernel(ksize, sigma) for sigma > 0 (float64)."""
    x = torch.arange(ksize, dtype=torch.float64) - (ksize - 1) / 2
    k = torch.exp(-(x ** 2) / (2 * sigma * sigma))
    return k / k.sum()


def disk_kernel(radius: int, alias_blur: float) -> torch.Tensor:
    """ImageNet-C's defocus kernel: an aliased disk (17x17 up to radius 8), normalised, then smoothed by
    a 3x3 (5x5 above radius 8) OpenCV Gaussian with sigma alias_blur (BORDER_REFLECT_101). (K, K) float32."""
    half, ks = (8, 3) if radius <= 8 else (radius, 5)
    r = torch.arange(-half, half + 1, dtype=torch.float32)
    disk = ((r[None, :] ** 2 + r[:, None] ** 2) <= radius ** 2).float()
    disk = disk / disk.sum()
    taps = cv2_gaussian_taps(ks, alias_blur).float()
    return separable(disk[None, None], taps, taps, "reflect101")[0, 0]


def fft_correlate(x: torch.Tensor, kernels: torch.Tensor, mode: str) -> torch.Tensor:
    """Correlate x (N, C, H, W) with centred odd kernels (K, K) (shared) or (N, K, K) (one per image) over
    borders padded by `mode`, through real FFTs (large kernels: O(HW log HW) instead of O(HW K^2))."""
    n, c, h, w = x.shape
    k = kernels.shape[-1]
    pad = k // 2
    y = pad2d(x, pad, pad, mode)
    size = (h + 2 * pad, w + 2 * pad)
    flipped = kernels.to(x).flip(-2, -1)          # correlation = convolution with the flipped kernel
    kf = torch.fft.rfft2(flipped.reshape(-1, 1, k, k) if kernels.ndim == 3 else flipped[None, None], s=size)
    out = torch.fft.irfft2(torch.fft.rfft2(y, s=size) * kf, s=size)
    return out[..., 2 * pad:2 * pad + h, 2 * pad:2 * pad + w]


def filter2d(x: torch.Tensor, kernel: torch.Tensor, mode: str = "reflect101") -> torch.Tensor:
    """cv2.filter2D per channel (correlation, centred anchor, BORDER_REFLECT_101 by default)."""
    return fft_correlate(x, kernel, mode)


def motion_offsets(radius: int, angle: torch.Tensor, size: tuple[int, int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """imagecorruptions' motion-blur path: for tap i of 2*radius+1, the per-image (dy, dx) ints (N,) along
    `angle` (degrees, (N,)); the walk stops at the first tap that leaves a (H, W) image for any image."""
    width = 2 * radius + 1
    a = torch.deg2rad(angle.double())
    py, px = width * torch.sin(a), width * torch.cos(a)
    hyp = torch.hypot(py, px)
    out = []
    for i in range(width):
        dy = -torch.ceil(i * py / hyp - 0.5).long()
        dx = -torch.ceil(i * px / hyp - 0.5).long()
        if bool((dy.abs() >= size[0]).any() or (dx.abs() >= size[1]).any()):
            break
        out.append((dy, dx))
    return out


def motion_blur(x: torch.Tensor, radius: int, sigma: float, angle: torch.Tensor) -> torch.Tensor:
    """Sum over taps of a one-sided Gaussian (sigma) of edge-clamped shifts along per-image `angle` (N,):
    one (4R+1)^2 kernel per image (tap i, offset up to 2R, at (2R - dy_i, 2R - dx_i)) correlated over
    edge-padded borders (the same as clamping each shift at the image edge)."""
    taps = torch.exp(-torch.arange(2 * radius + 1, dtype=torch.float64) ** 2 / (2 * sigma ** 2))
    taps = taps / taps.sum()
    n, centre = x.shape[0], 2 * radius
    kernels = torch.zeros(n, 2 * centre + 1, 2 * centre + 1, dtype=torch.float64)
    rows = torch.arange(n)
    for i, (dy, dx) in enumerate(motion_offsets(radius, angle, x.shape[-2:])):
        kernels.index_put_((rows, centre - dy, centre - dx), taps[i].expand(n), accumulate=True)
    return fft_correlate(x, kernels.to(x.device), "edge")


def zoom_matrix(n: int, factor: float, device=None, dtype=torch.float32, full: bool = False) -> torch.Tensor:
    """(n, n) matrix of imagecorruptions' clipped_zoom along one axis: the centre ceil(n / factor) samples,
    zoomed by scipy.ndimage.zoom (order 1, corner-aligned) to round(ceil(n / factor) * factor), first n kept
    (all of them with full=True: (round(...), n))."""
    crop = int(math.ceil(n / float(factor)))
    top = (n - crop) // 2
    out_len = int(round(crop * factor))
    scale = (crop - 1) / (out_len - 1) if out_len > 1 else 0.0
    rows = out_len if full else n
    pos = torch.arange(rows, dtype=torch.float64) * scale
    lo = pos.floor().clamp(max=crop - 1)
    frac = pos - lo
    hi = (lo + 1).clamp(max=crop - 1)
    m = torch.zeros(rows, n, dtype=torch.float64)
    r = torch.arange(rows)
    m.index_put_((r, (lo + top).long()), 1 - frac, accumulate=True)
    m.index_put_((r, (hi + top).long()), frac, accumulate=True)
    return m.to(device=device, dtype=dtype)


def clipped_zoom(x: torch.Tensor, factor: float, full: bool = False) -> torch.Tensor:
    """imagecorruptions' clipped_zoom on (N, C, H, W): zoom the centre by `factor`, keep the size (or, with
    full=True, the zoomed size round(ceil(H / factor) * factor), as the reference's snow layer does)."""
    h, w = x.shape[-2:]
    mh, mw = zoom_matrix(h, factor, x.device, x.dtype, full), zoom_matrix(w, factor, x.device, x.dtype, full)
    return mh @ x @ mw.T


def sample_bilinear_symmetric(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """scipy map_coordinates(order=1, mode='reflect') per image: x (N, C, H, W), rows/cols (N, H, W) float
    source coordinates -> (N, C, H, W)."""
    n, c, h, w = x.shape

    def fold(i, size):  # symmetric extension: -1 -> 0, size -> size - 1
        period = 2 * size
        i = i.remainder(period)
        return torch.where(i >= size, period - 1 - i, i)

    r0, c0 = rows.floor(), cols.floor()
    fr, fc = (rows - r0).to(x.dtype), (cols - c0).to(x.dtype)
    r0, c0 = r0.long(), c0.long()
    flat = x.reshape(n, c, h * w)
    out = 0
    for dr, wr in ((0, 1 - fr), (1, fr)):
        for dc, wc in ((0, 1 - fc), (1, fc)):
            idx = (fold(r0 + dr, h) * w + fold(c0 + dc, w)).view(n, 1, h * w).expand(n, c, h * w)
            out = out + flat.gather(2, idx).view(n, c, h, w) * (wr * wc)[:, None]
    return out


Uniform = Callable[[tuple], torch.Tensor]


def plasma_fractal(n: int, mapsize: int, decay: float, generator: torch.Generator | None = None,
                   device=None, uniform: Uniform | None = None) -> torch.Tensor:
    """Diamond-square height maps (n, mapsize, mapsize) float64 in [0, 1] (ImageNet-C's fog), batched.
    uniform(shape) -> U[0, 1) draws (default: torch.rand with `generator`); injectable for reference tests."""
    if mapsize & (mapsize - 1):
        raise ValueError(f"mapsize must be a power of two, got {mapsize}")
    if uniform is None:
        uniform = lambda shape: torch.rand(shape, generator=generator, device=device, dtype=torch.float64)  # noqa: E731
    m = torch.zeros(n, mapsize, mapsize, dtype=torch.float64, device=device)
    step, wibble = mapsize, 100.0

    def wibbled_mean(a):
        return a / 4 + wibble * (-wibble + 2 * wibble * uniform(tuple(a.shape)).to(a))

    while step >= 2:
        half = step // 2
        corner = m[:, 0::step, 0::step]
        acc = corner + corner.roll(-1, dims=1)
        acc = acc + acc.roll(-1, dims=2)
        m[:, half::step, half::step] = wibbled_mean(acc)
        dr = m[:, half::step, half::step]
        ul = m[:, 0::step, 0::step]
        lt = dr + dr.roll(1, dims=1) + ul + ul.roll(-1, dims=2)
        m[:, 0::step, half::step] = wibbled_mean(lt)
        tt = dr + dr.roll(1, dims=2) + ul + ul.roll(-1, dims=1)
        m[:, half::step, 0::step] = wibbled_mean(tt)
        step //= 2
        wibble /= decay
    flat = m.flatten(1)
    lo = flat.min(1).values.view(n, 1, 1)
    m = m - lo
    return m / m.flatten(1).max(1).values.view(n, 1, 1)
