"""`MultiView`: all views of a uint8 batch as batched tensor ops on its device, running the registered ops
(ops/) in stage order. Parameters are sampled on the CPU from a seeded generator (`sample`) and applied
separately (`apply`), so views replay exactly.

Two engines, same views (bit-identical on CPU to the pinned golden hashes; <= 1e-4 across devices):
- CPU ("indexed"): each view in chunks of images sized so the working tensors stay in cache (one
  grid_sample per chunk, then the colour ops on index sets, then normalisation written straight into the
  output).
- other devices ("masked"): no cache chunking (chunks bounded by `device_chunk_elements` of memory
  instead); the views of one spec are made together in one batch; all of a call's parameters travel in
  one non-blocking copy (from pinned memory on CUDA); per-image choices are masks (no index sets, no
  host reads); constants are cached per device; views are written in `dtype` (the AMP dtype) directly.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from ssl_aug.augment.ops import OPS, Context, constant, identity_affine
from ssl_aug.augment.ops.functional import apply_color_matrix
from ssl_aug.augment.params import ViewParams, sample_view_params
from ssl_aug.augment.spec import ViewSpec
from ssl_aug.errors import SslAugError

MODES = ("exact", "fast")
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
CHUNK_ELEMENTS = 1 << 22  # CPU: floats per working tensor (16 MB): the ~30 colour passes stay in cache
DEVICE_CHUNK_ELEMENTS = 1 << 28  # other devices: floats per working tensor (1 GiB), a memory bound only


def pack_to_device(groups: list[ViewParams], device: torch.device) -> list[ViewParams]:
    """All parameter tensors of a call in ONE host->device copy: bytes concatenated (8-byte aligned), pinned
    on CUDA, copied non-blocking, then viewed back per tensor on the device (views launch no kernels)."""
    parts, layout, off = [], [], 0
    for p in groups:
        for k, t in p.as_dict().items():
            pad = (-off) % 8
            if pad:
                parts.append(torch.zeros(pad, dtype=torch.uint8))
                off += pad
            b = t.contiguous().view(-1).view(torch.uint8)
            layout.append((k, t.dtype, t.shape, off, b.numel()))
            parts.append(b)
            off += b.numel()
    host = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.uint8)
    if device.type == "cuda":
        host = host.pin_memory()
    dev = host.to(device, non_blocking=True)
    out, i = [], 0
    for p in groups:
        d = {}
        for _ in p.as_dict():
            k, dtype, shape, o, nb = layout[i]
            d[k] = dev[o:o + nb].view(dtype).view(shape)
            i += 1
        out.append(ViewParams(d))
    return out


class MultiView:
    """Views of `specs[i]` repeated `counts[i]` times, in spec order.

    mode "exact": equal to torchvision v2 functional ops per image (crop without antialias);
    "fast": jitter + grayscale folded into one affine colour map per image (approximate, see ops).
    Output: list of (N, 3, size, size) tensors normalised with each spec's mean/std, on the input's
    device, in `dtype` (maths in float32, cast at the end), optionally channels_last.
    masked: None = by device (CPU indexed, others masked); True/False forces an engine (tests).
    """

    def __init__(self, specs: Sequence[ViewSpec] | ViewSpec, counts: Sequence[int] | int = 2,
                 mode: str = "exact", channels_last: bool = False, dtype: torch.dtype = torch.float32,
                 chunk_elements: int = CHUNK_ELEMENTS, device_chunk_elements: int = DEVICE_CHUNK_ELEMENTS,
                 masked: Optional[bool] = None):
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
        self.channels_last, self.dtype, self.masked = channels_last, dtype, masked
        self.chunk_elements, self.device_chunk_elements = int(chunk_elements), int(device_chunk_elements)
        self.view_specs = [s for s, c in zip(specs, counts) for _ in range(c)]

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
        masked = (x.device.type != "cpu") if self.masked is None else self.masked
        fmt = torch.channels_last if (self.channels_last and normalize) else torch.contiguous_format
        dtype = self.dtype if normalize else torch.float32
        if masked:
            return self._apply_masked(x, params, normalize, fmt, dtype)
        out = []
        for spec, p in zip(self.view_specs, params):
            s = spec.size
            view = torch.empty((n, 3, s, s), dtype=dtype, device=x.device, memory_format=fmt)
            inv, shift = self._norm(spec, x.device)
            step = max(1, self.chunk_elements // (3 * s * s))
            for n0 in range(0, n, step):
                rows = slice(n0, min(n, n0 + step))
                pr = p[rows]
                y = self._view(x[rows], spec, pr, Context(self.mode, False, pr.to("cpu")))
                dst = view[rows]
                if not normalize:
                    dst.copy_(y)
                elif dst.dtype == torch.float32 and dst.is_contiguous():
                    torch.mul(y, inv, out=dst).add_(shift)  # (y - mean) / std
                else:
                    dst.copy_(y.mul_(inv).add_(shift))  # cast / channels_last in the same copy
            out.append(view)
        return out

    @staticmethod
    def _norm(spec: ViewSpec, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(1/std, -mean/std) as (1,3,1,1) float32 constants cached per device."""
        inv = constant(f"norm_inv{spec.std}", device, torch.float32,
                       lambda: torch.tensor([1.0 / v for v in spec.std]).view(1, 3, 1, 1))
        shift = constant(f"norm_shift{spec.mean}{spec.std}", device, torch.float32,
                         lambda: torch.tensor([-m / v for m, v in zip(spec.mean, spec.std)]).view(1, 3, 1, 1))
        return inv, shift

    def _view(self, x: torch.Tensor, spec: ViewSpec, p: ViewParams, ctx: Context) -> torch.Tensor:
        """The views of x (n,3,H,W) float in [0, 1] for parameters p (V*n rows, view-major) ->
        (V*n,3,size,size) float32 in [0, 1]: the crop, then every other active op in stage order; in fast
        mode consecutive ops with an `affine` form are folded into one colour map."""
        ops = sorted(OPS.values(), key=lambda o: o.stage)
        y = OPS["crop"].apply(x, spec.cfg("crop"), p, ctx)
        i = 0
        while i < len(ops):
            op = ops[i]
            if op.name == "crop":
                i += 1
                continue
            if self.mode == "fast" and op.affine is not None:
                a, t, mu = identity_affine(y)
                while i < len(ops) and ops[i].affine is not None:
                    a, t = ops[i].affine(a, t, mu, spec.cfg(ops[i].name), p, ctx)
                    i += 1
                y = apply_color_matrix(y, a.float(), t.float())
                continue
            cfg = spec.cfg(op.name)
            if op.active(cfg):
                y = op.apply(y, cfg, p, ctx)
            i += 1
        return y

    def _groups(self) -> list[tuple[ViewSpec, list[int]]]:
        """Runs of consecutive views with equal specs (made together on a device); computed once."""
        if getattr(self, "_group_list", None) is None:
            groups: list[tuple[ViewSpec, list[int]]] = []
            for i, s in enumerate(self.view_specs):
                if groups and groups[-1][0] == s:
                    groups[-1][1].append(i)
                else:
                    groups.append((s, [i]))
            self._group_list = groups
        return self._group_list

    def _apply_masked(self, x, params, normalize, fmt, dtype) -> list[torch.Tensor]:
        n = x.shape[0]
        groups = self._groups()
        host = [ViewParams.cat([params[i] for i in idx]).to("cpu") if len(idx) > 1 else params[idx[0]].to("cpu")
                for _, idx in groups]
        dev = pack_to_device(host, x.device)
        out: list = [None] * len(self.view_specs)
        for (spec, idx), hp, dp in zip(groups, host, dev):
            v, s = len(idx), spec.size
            buf = torch.empty((v * n, 3, s, s), dtype=dtype, device=x.device, memory_format=fmt)
            inv, shift = self._norm(spec, x.device)
            if v * n * 3 * s * s <= self.device_chunk_elements:
                units = [(slice(0, v * n), slice(0, n))]
            else:  # memory bound: view by view, image chunks
                step = max(1, self.device_chunk_elements // (3 * s * s))
                units = [(slice(k * n + n0, k * n + min(n, n0 + step)), slice(n0, min(n, n0 + step)))
                         for k in range(v) for n0 in range(0, n, step)]
            for prow, xrow in units:
                y = self._view(x[xrow], spec, dp[prow], Context(self.mode, True, hp[prow]))
                dst = buf[prow]
                if normalize:
                    torch.addcmul(shift, y, inv, out=dst)  # (y - mean) / std, cast to dtype in the write
                else:
                    dst.copy_(y)
            for k, i in enumerate(idx):
                out[i] = buf[k * n:(k + 1) * n]
        return out
