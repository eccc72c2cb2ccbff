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
- Optional (off by default; the default images never change): `spurious=RATE` paints a square
  "bandage" patch of one of 10 palette colours (the group) on every image; in the training split the
  patch colour is the class's own colour for a share RATE of each class (the rest spread evenly over
  the other colours), in the test split every class has every colour equally often. Domain
  randomization knobs `hue`, `noise`, `lighting`, `texture` (see RANDOMIZATION) and `shift` (knobs
  used by the test split only: a shifted test domain) draw from their own streams, so the structures
  (masks) stay those of the default images.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from ssl_aug.errors import SslAugError
from ssl_aug.io import atomic_write

__all__ = ["CLASSES", "load_embedded", "generate_embedded", "GENERATOR_VERSION", "PALETTE", "PALETTE_NAMES",
           "RANDOMIZATION", "SHIFTED_DOMAIN", "patch_side"]

GENERATOR_VERSION = 2  # bump when the rendering changes: it is part of the cache file name
CLASSES = ["hstripes", "vstripes", "diagonal", "checker", "dots", "rings", "rays", "noise", "zigzag",
           "grid"]
SPLITS = {"train": 0, "test": 1}
DEFAULT_N_PER_CLASS = {"train": 500, "test": 200}
DEFAULT_SIZE = 20
_SS = 3  # supersampling factor per axis
_MIN_LUMA_GAP = 0.3
_NOISE_STD = 0.02
# the nuisance ("bandage") patch colours, one per group; the patch side is PATCH_FRACTION of the image
PALETTE = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [255, 0, 255], [0, 255, 255],
                    [255, 128, 0], [128, 0, 255], [255, 255, 255], [0, 0, 0]], dtype=np.uint8)
PALETTE_NAMES = ["red", "green", "blue", "yellow", "magenta", "cyan", "orange", "purple", "white", "black"]
PATCH_FRACTION = 0.3
# domain randomization knobs: hue [lo, hi] in turns (colours drawn in HSV, saturation 0.4-1, value
# 0.15-1), noise [lo, hi] per-image pixel noise std, lighting L (a linear brightness ramp of slope
# U(-L, L) per half image), texture A (smooth random blotches of amplitude U(0, A))
RANDOMIZATION = ("hue", "noise", "lighting", "texture")
SHIFTED_DOMAIN = {"hue": [0.45, 0.7], "noise": [0.06, 0.1], "lighting": 0.4, "texture": 0.15}


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


def patch_side(size: int) -> int:
    """Side in pixels of the nuisance patch on a size x size image."""
    return max(2, int(round(size * PATCH_FRACTION)))


def _knobs(knobs: dict, where: str = "") -> dict:
    """Validate domain randomization knobs (see RANDOMIZATION) -> {name: (lo, hi) | float}."""
    out = {}
    for k, v in knobs.items():
        if v is None:
            continue
        if k not in RANDOMIZATION:
            allowed = ", ".join(RANDOMIZATION if where else ("seed", "size", "n_per_class", "cache", "spurious", "shift")
                                + RANDOMIZATION)
            raise SslAugError(f"embedded option {where}{k}={v!r} is unknown; allowed: {allowed}")
        if k in ("hue", "noise"):
            ok = (isinstance(v, (list, tuple)) and len(v) == 2 and v[0] <= v[1]
                  and all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in v))
            ok = ok and ((v[1] - v[0] <= 1) if k == "hue" else (v[0] >= 0 and v[1] <= 0.5))
            if not ok:
                allowed = "hi - lo <= 1 (turns of the colour wheel)" if k == "hue" else "0 <= lo, hi <= 0.5"
                raise SslAugError(f"embedded option {where}{k}={v!r} is not allowed; allowed: [lo, hi] with lo <= hi, {allowed}")
            out[k] = (float(v[0]), float(v[1]))
        else:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
                raise SslAugError(f"embedded option {where}{k}={v!r} is not allowed; allowed: a number in [0, 1]")
            out[k] = float(v)
    return out


def _options(split, spurious, shift, knobs) -> tuple[float | None, dict]:
    """Validate the optional features -> (spurious rate or None, randomization knobs for this split)."""
    if spurious is not None and (isinstance(spurious, bool) or not isinstance(spurious, (int, float))
                                 or not 0.0 <= spurious <= 1.0):
        raise SslAugError(f"embedded spurious={spurious!r} is not allowed; allowed: a rate in [0, 1] (e.g. 0.95)")
    out = _knobs(knobs)
    if shift is not None:
        if shift == "default":
            shift = SHIFTED_DOMAIN
        if not isinstance(shift, dict):
            raise SslAugError(f"embedded shift={shift!r} is not allowed; allowed: 'default' or a table of "
                              f"{', '.join(RANDOMIZATION)}")
        shifted = _knobs(shift, "shift.")
        if split == "test":
            out.update(shifted)
    return (None if spurious is None else float(spurious)), out


def _hsv_colours(rng, n: int, hue: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Two HSV-drawn colours per image (hue in `hue` turns) with the usual luma gap: (n, 3) each."""
    luma = np.array([0.299, 0.587, 0.114])

    def draw(m):
        h = np.mod(rng.uniform(hue[0], hue[1], m), 1.0)
        sat, val = rng.uniform(0.4, 1.0, m), rng.uniform(0.15, 1.0, m)
        k = lambda j: np.mod(j + h * 6, 6)  # noqa: E731  (standard hsv -> rgb)
        f = lambda j: val - val * sat * np.clip(np.minimum(k(j), 4 - k(j)), 0, 1)  # noqa: E731
        return np.stack([f(5), f(3), f(1)], 1)

    a, b = draw(n), draw(n)
    bad = np.abs((a - b) @ luma) < _MIN_LUMA_GAP
    while bad.any():
        b[bad] = draw(int(bad.sum()))
        bad = np.abs((a - b) @ luma) < _MIN_LUMA_GAP
    return a, b


def _randomize(img, base_noise, rng, knobs: dict, size: int) -> np.ndarray:
    """Apply the knobs to clean renders img (n, 3, size, size) in [0, 1]; base_noise: the default noise."""
    n = img.shape[0]
    if "lighting" in knobs:
        g = (np.arange(size) + 0.5) / (size / 2) - 1.0  # -1..1
        gy, gx = np.meshgrid(g, g, indexing="ij")
        theta = rng.uniform(0, 2 * np.pi, (n, 1, 1, 1))
        slope = rng.uniform(-knobs["lighting"], knobs["lighting"], (n, 1, 1, 1))
        img = img * (1 + slope * (np.cos(theta) * gx + np.sin(theta) * gy))
    if "texture" in knobs:
        import torch.nn.functional as F

        field = torch.from_numpy(rng.uniform(-1, 1, (n, 1, 4, 4)))
        blot = F.interpolate(field, size=(size, size), mode="bilinear", align_corners=False).numpy()
        img = img + rng.uniform(0, knobs["texture"], (n, 1, 1, 1)) * blot
    if "noise" in knobs:
        lo, hi = knobs["noise"]
        return img + rng.normal(0.0, 1.0, img.shape) * rng.uniform(lo, hi, (n, 1, 1, 1))
    return img + base_noise


def _paint_patches(images: np.ndarray, labels: np.ndarray, split: str, rate: float, rng) -> np.ndarray:
    """Paint the nuisance patch on every image (in place) -> groups (N,) int64 (palette index)."""
    n_img, size = images.shape[0], images.shape[-1]
    k, g_count = patch_side(size), len(PALETTE)
    groups = np.empty(n_img, np.int64)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        if split == "train":
            aligned = int(round(rate * len(idx)))
            others = np.array([g for g in range(g_count) if g != c % g_count])
            groups[idx[:aligned]] = c % g_count
            groups[idx[aligned:]] = others[np.arange(len(idx) - aligned) % len(others)]
        else:  # every colour equally often in every class: nuisance independent of the class
            groups[idx] = np.arange(len(idx)) % g_count
    top = rng.integers(0, size - k + 1, n_img)
    left = rng.integers(0, size - k + 1, n_img)
    for i in range(n_img):
        images[i, :, top[i]:top[i] + k, left[i]:left[i] + k] = PALETTE[groups[i]][:, None, None]
    return groups


def generate_embedded(split: str = "train", seed: int = 0, size: int = DEFAULT_SIZE,
                      n_per_class: int | None = None, spurious: float | None = None, shift=None,
                      return_groups: bool = False, **knobs):
    """Render the split: images (N, 3, size, size) uint8, labels (N,) int64, N = n_per_class * 10
    (+ groups (N,) int64 palette index, or None without `spurious`, when return_groups).

    Images are ordered class by class (labels 0,0,...,1,1,...); shuffle in the batch source.
    spurious: share of each training class whose patch has the class's own colour (module docstring);
    knobs hue/noise/lighting/texture: domain randomization; shift: knobs for the test split only
    ("default" = SHIFTED_DOMAIN).
    """
    if split not in SPLITS:
        raise SslAugError(f"unknown split {split!r} for dataset 'embedded'; allowed: {', '.join(SPLITS)}")
    if not isinstance(size, int) or not 8 <= size <= 128:
        raise SslAugError(f"embedded size={size!r} is not allowed; allowed: an integer from 8 to 128")
    n = DEFAULT_N_PER_CLASS[split] if n_per_class is None else n_per_class
    if not isinstance(n, int) or n < 1:
        raise SslAugError(f"embedded n_per_class={n!r} is not allowed; allowed: an integer >= 1")
    rate, knobs = _options(split, spurious, shift, knobs)
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), SPLITS[split]])))
    dr = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), SPLITS[split], 1])))
    s = size * _SS
    grid = (np.arange(s) + 0.5) / _SS - size / 2  # supersample centres in output-pixel units
    v, u = np.meshgrid(grid, grid, indexing="ij")
    u, v = u[None], v[None]
    images = np.empty((len(CLASSES) * n, 3, size, size), np.uint8)
    for c, cls in enumerate(CLASSES):
        m = _mask(cls, u, v, rng, n, size).astype(np.float64)
        cover = m.reshape(n, size, _SS, size, _SS).mean(axis=(2, 4))[:, None]  # (n, 1, size, size)
        a, b = _colours(rng, n)
        if "hue" in knobs:  # the default draws above keep the main stream (and so the masks) unchanged
            a, b = _hsv_colours(dr, n, knobs["hue"])
        img = cover * a[:, :, None, None] + (1 - cover) * b[:, :, None, None]
        noise = rng.normal(0.0, _NOISE_STD, img.shape)
        img = _randomize(img, noise, dr, knobs, size) if knobs else img + noise
        images[c * n:(c + 1) * n] = np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
    labels = np.repeat(np.arange(len(CLASSES), dtype=np.int64), n)
    groups = None
    if rate is not None:
        sp = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), SPLITS[split], 2])))
        groups = _paint_patches(images, labels, split, rate, sp)
    return (images, labels, groups) if return_groups else (images, labels)


def _cache_dir(root) -> Path:
    return (Path(root).expanduser() if root is not None else Path.home() / ".cache" / "ssl_aug") / "embedded"


def load_embedded(split: str = "train", root: str | os.PathLike | None = None, seed: int = 0,
                  size: int = DEFAULT_SIZE, n_per_class: int | None = None, cache: bool = True,
                  spurious: float | None = None, shift=None, **knobs):
    """The embedded data set as an ImageDataset (images (N,3,size,size) uint8, labels (N,) int64; with
    `spurious`, groups (N,) = patch colour, group_names = PALETTE_NAMES).

    Generated on first use (a second or two) and cached as npz under `root`/embedded (default
    ~/.cache/ssl_aug/embedded); `cache=False` neither reads nor writes the cache. spurious, shift and
    the randomization knobs: see generate_embedded.
    """
    from ssl_aug.data import ImageDataset

    n = DEFAULT_N_PER_CLASS.get(split) if n_per_class is None else n_per_class
    extra = {k: v for k, v in dict(spurious=spurious, shift=shift, **knobs).items() if v is not None}
    x = y = g = None
    path = None
    if cache and split in SPLITS:
        tag = ""
        if extra:  # options in the name; the default images keep their file name
            _options(split, spurious, shift, knobs)  # validate before hashing
            tag = "_o" + hashlib.sha1(json.dumps(extra, sort_keys=True).encode()).hexdigest()[:10]
        path = _cache_dir(root) / f"embedded_v{GENERATOR_VERSION}_{split}_seed{seed}_s{size}_n{n}{tag}.npz"
        if path.exists():
            try:
                with np.load(path) as f:
                    x, y = f["x"], f["y"]
                    g = f["g"] if spurious is not None else None
            except (OSError, ValueError, KeyError, zipfile.BadZipFile):
                x = y = None  # unreadable cache: regenerate and overwrite
    if x is None:
        x, y, g = generate_embedded(split, seed=seed, size=size, n_per_class=n, spurious=spurious, shift=shift,
                                    return_groups=True, **knobs)
        if path is not None:
            _atomic_savez(path, x=x, y=y, **({} if g is None else {"g": g}))
    groups = None if g is None else torch.from_numpy(np.asarray(g, dtype=np.int64))
    return ImageDataset(images=torch.from_numpy(np.ascontiguousarray(x)), labels=torch.from_numpy(y),
                        classes=list(CLASSES), name=f"embedded/{split}", groups=groups,
                        group_names=None if groups is None else list(PALETTE_NAMES))


def _atomic_savez(path: Path, **arrays) -> None:
    """Write the npz cache atomically (ssl_aug.io), so readers never see a partial file; a read-only or
    full cache location only costs a regeneration next time."""
    try:
        atomic_write(path, lambda f: np.savez(f, **arrays), what="cache file")
    except SslAugError:
        pass
