"""`MultiView`: all views of a uint8 batch as batched tensor ops on its device. Views of the same
output size are made together (one grid_sample for all their crops); parameters are sampled on the CPU
from a seeded generator (`sample`) and applied separately (`apply`), so views replay exactly."""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from ssl_aug.augment import ops
from ssl_aug.augment.params import ViewParams, sample_view_params
from ssl_aug.augment.spec import ViewSpec
from ssl_aug.errors import SslAugError

MODES = ("exact", "fast")
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class MultiView:
    """Views of `specs[i]` repeated `counts[i]` times, in spec order.

    mode "exact": equal to torchvision v2 functional ops per image (crop without antialias);
    "fast": jitter + grayscale folded into one affine colour map per image (approximate, see ops).
    Output: list of (N, 3, size, size) tensors normalised with each spec's mean/std, on the input's
    device, in `dtype` (maths in float32, cast at the end), optionally channels_last.
    """

    def __init__(self, specs: Sequence[ViewSpec] | ViewSpec, counts: Sequence[int] | int = 2,
                 mode: str = "exact", channels_last: bool = False, dtype: torch.dtype = torch.float32):
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
        if len(params) != len(self.view_specs) or any(len(p) != images.shape[0] for p in params):
            raise SslAugError(f"MultiView.apply: got {len(params)} parameter sets for {len(self.view_specs)} "
                              f"views of {images.shape[0]} images; use the output of sample() on this batch")
        if images.dtype == torch.uint8:
            x = images.float().mul_(1.0 / 255.0)
        else:
            x = images.float()
        out: list[Optional[torch.Tensor]] = [None] * len(self.view_specs)
        groups: dict[int, list[int]] = {}
        for i, s in enumerate(self.view_specs):
            groups.setdefault(s.size, []).append(i)
        for size, idx in groups.items():
            y = self._group(x, [self.view_specs[i] for i in idx], [params[i] for i in idx], size)
            for j, i in enumerate(y.chunk(len(idx))):
                out[idx[j]] = self._finish(i, self.view_specs[idx[j]]) if normalize else i
        return out

    def _group(self, x: torch.Tensor, specs: list[ViewSpec], params: list[ViewParams], size: int) -> torch.Tensor:
        """Views of one output size as one (V*N, 3, size, size) float32 batch in [0, 1]."""
        n = x.shape[0]
        p = ViewParams.cat(params)  # CPU: index sets below need no device sync
        dev = x.device
        y = ops.resized_crops(x, p.box.to(dev, non_blocking=True), p.flip.to(dev, non_blocking=True), size)
        for v, s in enumerate(specs):
            if s.auto_augment is not None:
                y[v * n:(v + 1) * n] = self._policy(y[v * n:(v + 1) * n], s.auto_augment, params[v].policy_seed)
        if self.mode == "exact":
            y = ops.color_jitter(y, p.factors, p.order, p.jitter_on)
            ops.grayscale_(y, p.gray)
        else:
            a, t = ops.color_matrix(y, p.factors, p.order, p.jitter_on, p.gray)
            ops.apply_color_matrix_(y, a, t)
        for k in sorted({s.blur.kernel_size for s in specs}):
            on = p.blur_on & torch.cat([torch.full((n,), s.blur.kernel_size == k) for s in specs])
            ops.blur_(y, on, p.sigma, k)
        thr = torch.cat([torch.full((n,), s.solarize.threshold) for s in specs])
        ops.solarize_(y, p.solarize, thr)
        return y

    def _finish(self, y: torch.Tensor, spec: ViewSpec) -> torch.Tensor:
        """Normalise (x - mean) / std in float32 and cast/lay out once."""
        inv = torch.tensor([1.0 / s for s in spec.std], device=y.device).view(1, 3, 1, 1)
        shift = torch.tensor([-m / s for m, s in zip(spec.mean, spec.std)], device=y.device).view(1, 3, 1, 1)
        z = torch.addcmul(shift, y, inv)  # (y - mean) / std in one pass
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        if z.dtype == self.dtype and not self.channels_last:
            return z
        return z.to(dtype=self.dtype, memory_format=fmt)

    def _policy(self, y: torch.Tensor, name: str, seed: torch.Tensor) -> torch.Tensor:
        """kornia RandAugment / AutoAugment on (n,3,s,s) in [0, 1], its randomness seeded from `seed`."""
        if name not in self._policies:
            from kornia.augmentation import auto
            self._policies[name] = auto.RandAugment(n=2, m=10) if name == "randaugment" else auto.AutoAugment("cifar10")
        devices = [y.device] if y.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(int(seed[0]))
            return self._policies[name](y).clamp_(0.0, 1.0)
