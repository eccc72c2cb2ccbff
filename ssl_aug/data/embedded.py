"""The embedded default data set: procedurally generated colour textures, built into the package.

Design (why augmentation visibly matters here):
- The CLASS is a binary structure that fills the whole image, so a random resized crop keeps it:
  hstripes, vstripes, diagonal (either diagonal, so a horizontal flip keeps the class), checker,
  dots, rings, rays, noise (random 2-pixel cells), zigzag, grid. Period, phase, a +-10 degree
  rotation and the centre of rings/rays are random per image.
- The COLOURS are random per image and independent of the class: the two parts of the pattern get
  two RGB colours drawn uniformly from the cube (with a luma gap >= 0.3, so the structure survives
  grayscale). Two views of one image share their colours exactly, so without colour distortion an
  encoder can solve the contrastive task by matching colours, which says nothing about the class.
- Images are rendered with 3x3 supersampling (anti-aliased edges) plus mild pixel noise, in float64
  numpy from one seeded PCG64 stream per split, then rounded to uint8: the same (split, seed, size,
  n_per_class) gives bit-identical images on every generation. Results are cached as npz.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch

from ssl_aug.errors import SslAugError

__all__ = ["CLASSES", "load_embedded", "generate_embedded", "GENERATOR_VERSION"]

GENERATOR_VERSION = 2  # bump when the rendering changes: it is part of the cache file name
CLASSES = ["hstripes", "vstripes", "diagonal", "checker", "dots", "rings", "rays", "noise", "zigzag",
           "grid"]
SPLITS = {"train": 0, "test": 1}
DEFAULT_N_PER_CLASS = {"train": 500, "test": 200}
DEFAULT_SIZE = 20
_SS = 3  # supersampling factor per axis
_MIN_LUMA_GAP = 0.3
_NOISE_STD = 0.02


def _rot(u, v, angle):
    c, s = np.cos(angle), np.sin(angle)
    return c * u - s * v, s * u + c * v


def _mask(cls: str, u, v, rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Binary structure of class `cls` at coordinates u, v (pixels, centred): (n, h, w) bool."""
    def draw(lo, hi):
        return rng.uniform(lo, hi, (n, 1, 1))

    jitter = np.deg2rad(draw(-10, 10))
    phase = draw(0, 2 * np.pi)
    if cls in ("hstripes", "vstripes", "diagonal"):
        base = {"hstripes": 0.0, "vstripes": np.pi / 2}.get(cls)
        if base is None:  # either diagonal, so a horizontal flip keeps the class
            base = np.where(rng.random((n, 1, 1)) < 0.5, np.pi / 4, -np.pi / 4)
        _, vr = _rot(u, v, base + jitter)
        return np.sin(2 * np.pi * vr / draw(5.0, 8.0) + phase) > 0
    if cls == "checker":
        ur, vr = _rot(u, v, jitter)
        p = draw(8.0, 12.0)
        return np.sin(2 * np.pi * ur / p + phase) * np.sin(2 * np.pi * vr / p + draw(0, 2 * np.pi)) > 0
    if cls in ("dots", "grid"):
        ur, vr = _rot(u, v, jitter)
        p = draw(6.0, 9.0)
        du = np.mod(ur + draw(0, 1) * p, p) - p / 2
        dv = np.mod(vr + draw(0, 1) * p, p) - p / 2
        if cls == "dots":
            return du ** 2 + dv ** 2 < (draw(0.22, 0.3) * p) ** 2
        w = draw(0.12, 0.16) * p
        return (np.abs(du) < w) | (np.abs(dv) < w)
    if cls in ("rings", "rays"):
        cu, cv = draw(-0.15, 0.15) * size, draw(-0.15, 0.15) * size
        du, dv = u - cu, v - cv
        if cls == "rings":
            return np.sin(2 * np.pi * np.sqrt(du ** 2 + dv ** 2) / draw(4.0, 7.0) + phase) > 0
        k = rng.integers(4, 8, (n, 1, 1))
        return np.sin(k * np.arctan2(dv, du) + phase) > 0
    if cls == "noise":  # random binary cells of 2 pixels
        cells = rng.random((n, size // 2 + 2, size // 2 + 2)) < 0.5
        i = np.floor((v + size / 2) / 2 + draw(0, 1)).astype(np.int64)  # (n, h, w) cell rows
        j = np.floor((u + size / 2) / 2 + draw(0, 1)).astype(np.int64)
        return np.take_along_axis(cells.reshape(n, -1), (i * cells.shape[2] + j).reshape(n, -1), 1).reshape(i.shape)
    if cls == "zigzag":  # horizontal chevron stripes
        ur, vr = _rot(u, v, jitter)
        p, q = draw(5.0, 7.0), draw(5.0, 8.0)
        tri = np.abs(np.mod(ur / q + draw(0, 1), 1.0) - 0.5) * 2  # triangle wave in [0, 1]
        return np.sin(2 * np.pi * (vr + 0.6 * q * tri) / p + phase) > 0
    raise AssertionError(cls)


def _colours(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Two uniform RGB colours per image with |luma difference| >= _MIN_LUMA_GAP: (n, 3) each."""
    luma = np.array([0.299, 0.587, 0.114])
    a, b = rng.random((n, 3)), rng.random((n, 3))
    bad = np.abs((a - b) @ luma) < _MIN_LUMA_GAP
    while bad.any():  # rejection sampling, deterministic given the stream
        b[bad] = rng.random((int(bad.sum()), 3))
        bad = np.abs((a - b) @ luma) < _MIN_LUMA_GAP
    return a, b


def generate_embedded(split: str = "train", seed: int = 0, size: int = DEFAULT_SIZE,
                      n_per_class: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Render the split: images (N, 3, size, size) uint8, labels (N,) int64, N = n_per_class * 10.

    Images are ordered class by class (labels 0,0,...,1,1,...); shuffle in the batch source.
    """
    if split not in SPLITS:
        raise SslAugError(f"unknown split {split!r} for dataset 'embedded'; allowed: {', '.join(SPLITS)}")
    if not isinstance(size, int) or not 8 <= size <= 128:
        raise SslAugError(f"embedded size={size!r} is not allowed; allowed: an integer from 8 to 128")
    n = DEFAULT_N_PER_CLASS[split] if n_per_class is None else n_per_class
    if not isinstance(n, int) or n < 1:
        raise SslAugError(f"embedded n_per_class={n!r} is not allowed; allowed: an integer >= 1")
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), SPLITS[split]])))
    s = size * _SS
    grid = (np.arange(s) + 0.5) / _SS - size / 2  # supersample centres in output-pixel units
    v, u = np.meshgrid(grid, grid, indexing="ij")
    u, v = u[None], v[None]
    images = np.empty((len(CLASSES) * n, 3, size, size), np.uint8)
    for c, cls in enumerate(CLASSES):
        m = _mask(cls, u, v, rng, n, size).astype(np.float64)
        cover = m.reshape(n, size, _SS, size, _SS).mean(axis=(2, 4))[:, None]  # (n, 1, size, size)
        a, b = _colours(rng, n)
        img = cover * a[:, :, None, None] + (1 - cover) * b[:, :, None, None]
        img += rng.normal(0.0, _NOISE_STD, img.shape)
        images[c * n:(c + 1) * n] = np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
    labels = np.repeat(np.arange(len(CLASSES), dtype=np.int64), n)
    return images, labels


def _cache_dir(root) -> Path:
    return (Path(root).expanduser() if root is not None else Path.home() / ".cache" / "ssl_aug") / "embedded"


def load_embedded(split: str = "train", root: str | os.PathLike | None = None, seed: int = 0,
                  size: int = DEFAULT_SIZE, n_per_class: int | None = None, cache: bool = True):
    """The embedded data set as an ImageDataset (images (N,3,size,size) uint8, labels (N,) int64).

    Generated on first use (a second or two) and cached as npz under `root`/embedded (default
    ~/.cache/ssl_aug/embedded); `cache=False` neither reads nor writes the cache.
    """
    from ssl_aug.data import ImageDataset

    n = DEFAULT_N_PER_CLASS.get(split) if n_per_class is None else n_per_class
    x = y = None
    path = None
    if cache and split in SPLITS:
        path = _cache_dir(root) / f"embedded_v{GENERATOR_VERSION}_{split}_seed{seed}_s{size}_n{n}.npz"
        if path.exists():
            try:
                with np.load(path) as f:
                    x, y = f["x"], f["y"]
            except (OSError, ValueError, KeyError, zipfile.BadZipFile):
                x = y = None  # unreadable cache: regenerate and overwrite
    if x is None:
        x, y = generate_embedded(split, seed=seed, size=size, n_per_class=n)
        if path is not None:
            _atomic_savez(path, x=x, y=y)
    return ImageDataset(images=torch.from_numpy(np.ascontiguousarray(x)), labels=torch.from_numpy(y),
                        classes=list(CLASSES), name=f"embedded/{split}")


def _atomic_savez(path: Path, **arrays) -> None:
    """Write an npz via a temporary file + os.replace, so readers never see a partial file."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except OSError:  # a read-only or full cache location only costs a regeneration next time
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
