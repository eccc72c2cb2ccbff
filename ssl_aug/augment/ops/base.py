"""The op contract and registry. An augmentation op is one unit: its spec fields (a validated dataclass),
per-image parameter sampling (CPU, from a torch.Generator) and batched apply on the images' device.

    class Posterize(Op):                        # in ops/posterize.py
        name, config, stage = "posterize", PosterizeCfg, 55
        def sample(self, cfg, n, size, height, width, g): return {"post_on": torch.rand(n, generator=g) < cfg.p}
        def apply(self, x, cfg, p, ctx): ...     # x (M,3,s,s) float in [0, 1] -> same shape
    register_op(Posterize())                    # one registration line (ops/__init__.py or user code)

`MultiView` samples the ops in registration order (so new ops never change the parameters of older
ones) and applies them in `stage` order. A nested op's fields are a recipe table under its name
(`[augment.blur]`); a flat op (`nested = False`) puts its fields directly in the view table.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional

import torch

from ssl_aug.errors import SslAugError
from ssl_aug.registry import Registry

_CONSTANTS: dict = {}


def constant(name: str, device, dtype: torch.dtype, build: Callable[[], torch.Tensor]) -> torch.Tensor:
    """A constant tensor (weights, offsets, grids) built once per (name, device, dtype) and cached, so the
    hot path never copies a Python constant to the device."""
    key = (name, str(device), dtype)
    t = _CONSTANTS.get(key)
    if t is None:
        t = _CONSTANTS[key] = build().to(device=device, dtype=dtype)
    return t


class Context:
    """What an op's apply needs besides its parameters: mode ("exact" | "fast"), masked (True on non-CPU
    devices: per-image choices are float/bool masks over the whole batch, no index sets, no host reads;
    False on CPU: index sets from the host copy), and `host`, the ViewParams rows on the CPU."""

    def __init__(self, mode: str, masked: bool, host=None):
        self.mode, self.masked, self.host = mode, masked, host


class Op:
    """Base class of an augmentation op (see the module docstring). Subclasses set `name`, `config`
    (dataclass; defaults = the value a view has when the recipe leaves the op out), `stage` (apply order:
    crop 0, policy 10, colour 20-30, blur 40, solarize 50, kornia 60) and override sample / apply."""
    name: str = ""
    config: type = None
    stage: float = 100.0
    nested: bool = True

    def active(self, cfg) -> bool:
        """False when the op cannot change any image (its apply is skipped)."""
        p = getattr(cfg, "p", None)
        return p is None or p > 0

    def sample(self, cfg, n: int, size: int, height: int, width: int, g: torch.Generator) -> dict:
        """Per-image parameters of n images of (height, width) cropped to size: {key: tensor (n, ...)}."""
        return {}

    def apply(self, x: torch.Tensor, cfg, p, ctx: Context) -> torch.Tensor:
        """x (M,3,h,w) float32 in [0, 1], p: ViewParams of those M images -> (M,3,h',w') in [0, 1] (may be in place)."""
        return x

    affine: Optional[Callable] = None  # fast mode: (a (M,3,3), t (M,3), mu, cfg, p, ctx) -> (a, t), fused

    def probe(self) -> dict:
        """ViewSpec changes that make this op always fire (the invariance probe uses them)."""
        if self.config is not None and "p" in {f.name for f in dataclasses.fields(self.config)}:
            return {self.name: {"p": 1.0}} if self.nested else {"p": 1.0}
        raise SslAugError(f"op {self.name!r} has no probe setting; override Op.probe")

    def off(self) -> dict:
        """ViewSpec changes that switch this op off."""
        return {self.name: {"p": 0.0}} if self.nested else {"p": 0.0}

    def fields(self) -> list[str]:
        """Recipe keys this op owns in the view table."""
        return [self.name] if self.nested else [f.name for f in dataclasses.fields(self.config)]


OPS = Registry("augmentation op")


def register_op(op: Op | type) -> Op | type:
    """Add an op to the registry (by `op.name`); its fields become ViewSpec fields. Takes an Op instance
    (returned) or, as a class decorator, an Op subclass (registered as an instance, class returned)."""
    if isinstance(op, type) and issubclass(op, Op):
        register_op(op())
        return op
    if not isinstance(op, Op) or not op.name or not dataclasses.is_dataclass(op.config):
        raise SslAugError(f"register_op: {op!r} is not allowed; use an Op instance with a name and a dataclass config")
    taken = {f for o in OPS.values() if o.name != op.name for f in o.fields()} | {"mean", "std"}
    clash = sorted(set(op.fields()) & taken)
    if clash:
        raise SslAugError(f"register_op: op {op.name!r} field {clash[0]!r} is already a view field; rename it")
    return OPS.register(op.name, op, replace=True)


def list_ops() -> list[str]:
    """Names of the registered ops, in sampling order."""
    return list(OPS)


def get_op(name: str) -> Op:
    return OPS.get(name)


# ---- shared validation helpers for op configs ---------------------------------------------------
def prob(name: str, p) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise SslAugError(f"view spec: {name}={p!r} is not allowed; use a probability in [0, 1]")
    return float(p)


def pair(name: str, v, lo: float = -math.inf, hi: float = math.inf, lo_open: bool = False) -> tuple:
    ok = (isinstance(v, (list, tuple)) and len(v) == 2
          and all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in v))
    if ok:
        a, b = float(v[0]), float(v[1])
        ok = a <= b and (a > lo if lo_open else a >= lo) and b <= hi
    if not ok:
        bound = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"
        raise SslAugError(f"view spec: {name}={v!r} is not allowed; use [min, max] with min <= max inside {bound}")
    return (a, b)


def uniform(lo: float, hi: float, shape, g: torch.Generator) -> torch.Tensor:
    """Uniform draws in [lo, hi] (float64, as the parameters have always been drawn)."""
    return torch.rand(shape, generator=g, dtype=torch.float64).mul_(hi - lo).add_(lo)


def index_rows(mask: torch.Tensor) -> torch.Tensor:
    """Host index set of a (host) mask."""
    return mask.cpu().nonzero().squeeze(1)
