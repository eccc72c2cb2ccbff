"""`MultiView`: all views of a uint8 batch as batched tensor ops on its device. Each view is made in
chunks of images sized so the working tensors stay in cache (one grid_sample per chunk, then the colour
ops, then normalisation written straight into the output); parameters are sampled on the CPU from a
seeded generator (`sample`) and applied separately (`apply`), so views replay exactly."""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from ssl_aug.augment import ops
from ssl_aug.augment.params import ViewParams, sample_view_params
from ssl_aug.augment.spec import ViewSpec
from ssl_aug.errors import SslAugError

MODES = ("exact", "fast")
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
CHUNK_ELEMENTS = 1 << 22  # floats per working tensor (16 MB): the ~30 colour passes stay in cache


class MultiView:
    """Views of `specs[i]` repeated `counts[i]` times, in spec order.

    mode "exact": equal to torchvision v2 functional ops per image (crop without antialias);
    "fast": jitter + grayscale folded into one affine colour map per image (approximate, see ops).
    Output: list of (N, 3, size, size) tensors normalised with each spec's mean/std, on the input's
    device, in `dtype` (maths in float32, cast at the end), optionally channels_last.
    """

    def __init__(self, specs: Sequence[ViewSpec] | ViewSpec, counts: Sequence[int] | int = 2,
                 mode: str = "exact", channels_last: bool = False, dtype: torch.dtype = torch.float32,
                 chunk_elements: int = CHUNK_ELEMENTS):
        specs = [specs] if isinstance(specs, ViewSpec) else list(specs)
        counts = [counts] * len(specs) if isinstance(counts, int) else list(counts)
        if not specs or len(specs) != len(counts) or any(not isinstance(s, ViewSpec) for s in specs):
            raise SslAugError(f"MultiView: got {len(specs)} specs and counts {counts}; give one ViewSpec per count")
        if any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in counts):
            raise SslAugError(f"MultiView: counts={counts} is not allowed; use integers >= 1")
        if mode not in MODES:
            raise SslAugError(f"MultiView: mode={mode!r} is not allowed; use one of {', '.join(MODES)}")
        if dtype not in DTYPES:
            raise SslAugError(f"MultiView: dtype={dtype} is not allowed; use one of {', '.join(map(str, DTYPES))}")
        self.specs, self.counts, self.mode = specs, counts, mode
        self.channels_last, self.dtype = channels_last, dtype
        self.chunk_elements = int(chunk_elements)
        self.view_specs = [s for s, c in zip(specs, counts) for _ in range(c)]
        self._policies: dict[str, torch.nn.Module] = {}

    def __repr__(self) -> str:
        sizes = " + ".join(f"{c}x{s.size}" for s, c in zip(self.specs, self.counts))
        return f"MultiView({sizes}, mode={self.mode!r}, dtype={self.dtype}, channels_last={self.channels_last})"

    @staticmethod
    def _check(images: torch.Tensor) -> None:
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise SslAugError(f"MultiView: images of shape {shape} are not allowed; use (N, 3, H, W)")
        if images.dtype != torch.uint8 and not images.is_floating_point():
            raise SslAugError(f"MultiView: images of dtype {images.dtype} are not allowed; "
                              f"use uint8 (0-255) or float in [0, 1]")

    def sample(self, images: torch.Tensor, generator: Optional[torch.Generator] = None) -> list[ViewParams]:
        """Parameters of every view (list in view order), drawn on the CPU from `generator`."""
        self._check(images)
        if generator is None:
            generator = torch.Generator().manual_seed(int(torch.randint(0, 2 ** 62, (1,))))
        n, _, h, w = images.shape
        return [sample_view_params(s, n, h, w, generator) for s in self.view_specs]

    def __call__(self, images: torch.Tensor, generator: Optional[torch.Generator] = None,
                 return_params: bool = False):
        """Views of a batch (N,3,H,W) uint8 (or float in [0, 1]); with return_params also the parameters."""
        params = self.sample(images, generator)
        views = self.apply(images, params)
        return (views, params) if return_params else views

    def apply(self, images: torch.Tensor, params: list[ViewParams], normalize: bool = True) -> list[torch.Tensor]:
        """Make the views from given parameters (replay). normalize=False returns float32 views in [0, 1]."""
        self._check(images)
        n = images.shape[0]
        if len(params) != len(self.view_specs) or any(len(p) != n for p in params):
            raise SslAugError(f"MultiView.apply: got {len(params)} parameter sets for {len(self.view_specs)} "
                              f"views of {n} images; use the output of sample() on this batch")
        x = images.float().mul_(1.0 / 255.0) if images.dtype == torch.uint8 else images.float()
        fmt = torch.channels_last if (self.channels_last and normalize) else torch.contiguous_format
        out = []
        for spec, p in zip(self.view_specs, params):
            s = spec.size
            view = torch.empty((n, 3, s, s), dtype=self.dtype if normalize else torch.float32, device=x.device,
                               memory_format=fmt)
            inv = torch.tensor([1.0 / v for v in spec.std], device=x.device).view(1, 3, 1, 1)
            shift = torch.tensor([-m / v for m, v in zip(spec.mean, spec.std)], device=x.device).view(1, 3, 1, 1)
            step = max(1, self.chunk_elements // (3 * s * s))
            for k, n0 in enumerate(range(0, n, step)):
                rows = slice(n0, min(n, n0 + step))
                y = self._view(x[rows], spec, p[rows], k)
                dst = view[rows]
                if not normalize:
                    dst.copy_(y)
                elif dst.dtype == torch.float32 and dst.is_contiguous():
                    torch.mul(y, inv, out=dst).add_(shift)  # (y - mean) / std
                else:
                    dst.copy_(y.mul_(inv).add_(shift))  # cast / channels_last in the same copy
            out.append(view)
        return out

    def _view(self, x: torch.Tensor, spec: ViewSpec, p: ViewParams, chunk: int) -> torch.Tensor:
        """One view of a chunk of images: (n,3,H,W) float in [0, 1] -> (n,3,size,size) float32 in [0, 1].
        Parameters stay on the CPU: index sets need no device sync; tensors move as needed."""
        dev = x.device
        y = ops.resized_crops(x, p.box.to(dev, non_blocking=True), p.flip.to(dev, non_blocking=True), spec.size)
        if spec.auto_augment is not None:
            y = self._policy(y, spec.auto_augment, int(p.policy_seed[0]) + chunk)
        if self.mode == "exact":
            ops.color_jitter_(y, p.factors, p.order, p.jitter_on)
            ops.grayscale_(y, p.gray)
        else:
            a, t = ops.color_matrix(y, p.factors, p.order, p.jitter_on, p.gray)
            y = ops.apply_color_matrix(y, a, t)
        if spec.blur.p > 0:
            ops.blur_(y, p.blur_on, p.sigma, spec.blur.kernel_size)
        if spec.solarize.p > 0:
            ops.solarize_(y, p.solarize, torch.full((len(p),), spec.solarize.threshold))
        return y

    def _policy(self, y: torch.Tensor, name: str, seed: int) -> torch.Tensor:
        """kornia RandAugment / AutoAugment on (n,3,s,s) in [0, 1], its randomness seeded from `seed`."""
        if name not in self._policies:
            from kornia.augmentation import auto
            self._policies[name] = auto.RandAugment(n=2, m=10) if name == "randaugment" else auto.AutoAugment("cifar10")
        devices = [y.device] if y.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            return self._policies[name](y).clamp_(0.0, 1.0)
