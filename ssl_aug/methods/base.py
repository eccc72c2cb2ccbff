"""The method contract: what the trainer, hard-view sampling and export may call on a method.

A method is an ``nn.Module`` subclass of :class:`Method`, registered by name with
:func:`register_method`. Nothing outside ``ssl_aug/methods/`` branches on a method's name or type:

- ``forward(views, step, epoch) -> (loss, stats)``: views V x (N, 3, H_v, W_v); loss 0-d; stats
  {name: detached 0-d tensor} (no ``.item()``: no host sync in a step).
- ``per_image_loss(views) -> (N,)``: the loss of each image for one view set, no gradient, parameters
  and buffers left exactly as they were (hard view sampling scores candidates with it).
- ``after_backward(step)``: gradient edits (e.g. SwAV drops frozen prototype gradients).
- ``after_optimizer_step(step, total_steps)``: post-step updates (e.g. BYOL's EMA target).
- ``health_messages(stats) -> list[str]``: human warnings, called on logging steps only.
- ``exported = "backbone"``: the module exported as the encoder; ``heads``: modules exported with
  ``--with-head`` (projector, prototypes, predictor). Everything else (target networks, queues) is
  training state, kept in checkpoints only.
- ``rank_local_buffers``: True when buffers differ per rank (SwAV queue): DDP must not broadcast them.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import ClassVar

import torch
import torch.nn as nn

from ssl_aug.errors import SslAugError
from ssl_aug.registry import Registry

__all__ = ["Method", "METHODS", "register_method", "list_methods", "get_method", "method_options", "build_method", "encode_views",
           "check_views", "require", "preserved_norm_buffers", "step_generator"]

METHODS = Registry("method")


def register_method(name: str):
    """Class decorator: make a :class:`Method` subclass buildable by ``name`` in recipes."""
    def add(cls: type["Method"]) -> type["Method"]:
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise TypeError(f"register_method({name!r}) expects a Method subclass, got {cls!r}")
        cls.name = name
        return METHODS.register(name, cls, replace=True)
    return add


def list_methods() -> list[str]:
    """Registered method names, in registration order."""
    return METHODS.names()


def get_method(name: str) -> type["Method"]:
    """The Method subclass registered as `name` (one-line error with the choices otherwise)."""
    return METHODS.get(name)


class Method(nn.Module):
    """Base of every self-supervised method (see the module docstring for the contract)."""

    name: ClassVar[str] = ""
    exported: ClassVar[str] = "backbone"
    heads: ClassVar[tuple[str, ...]] = ("projector",)
    rank_local_buffers: ClassVar[bool] = False

    def per_image_loss(self, views) -> torch.Tensor:
        raise SslAugError(f"method {self.name!r} has no per-image loss, so hard view sampling "
                          f"(train.view_candidates > 1) cannot use it; allowed: "
                          f"{', '.join(n for n, c in METHODS.items() if c.has_per_image_loss())}")

    @classmethod
    def has_per_image_loss(cls) -> bool:
        return cls.per_image_loss is not Method.per_image_loss

    def after_backward(self, step: int) -> None:
        """Called after ``loss.backward()``, before gradient clipping and the optimiser step."""

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        """Called after every optimiser step; ``step`` counts the steps done so far (1-based)."""

    def health_messages(self, stats: dict) -> list[str]:
        """Human warnings from logged stats (reads them on the host; call on logging steps only)."""
        return []

    @classmethod
    def state_prefixes(cls) -> tuple[str, tuple[str, ...]]:
        """(exported encoder prefix, head prefixes) of ``state_dict`` keys, e.g. ("backbone.", ("projector.",))."""
        return cls.exported + ".", tuple(h + "." for h in cls.heads)


def method_options(name: str) -> dict[str, object]:
    """Keyword options of a method and their defaults (everything but ``backbone``)."""
    params = inspect.signature(get_method(name).__init__).parameters
    return {k: p.default for k, p in params.items() if k not in ("self", "backbone")}


def build_method(name: str, backbone: nn.Module, **kw) -> Method:
    """Wrap ``backbone`` (with ``feature_dim``) in a method; unknown names/options -> SslAugError."""
    allowed = method_options(name)
    unknown = sorted(set(kw) - set(allowed))
    if unknown:
        raise SslAugError(
            f"unknown option(s) {', '.join(unknown)} for method {name!r}: allowed are {', '.join(allowed)}"
        )
    return METHODS[name](backbone, **kw)


def require(ok: bool, name: str, value, allowed: str) -> None:
    """Raise the one-line SslAugError ``name=value is not allowed: allowed`` unless ``ok``."""
    if not ok:
        raise SslAugError(f"{name}={value!r} is not allowed: {allowed}")


def check_views(views) -> int:
    """Validate a list of V >= 2 view batches (N, 3, H, W) with one N; return N."""
    if not isinstance(views, (list, tuple)) or len(views) < 2:
        raise SslAugError(f"a method needs a list of at least 2 view batches, got {type(views).__name__}")
    sizes = {v.shape[0] for v in views}
    if len(sizes) != 1 or any(v.dim() != 4 for v in views):
        shapes = [tuple(v.shape) for v in views]
        raise SslAugError(f"views have shapes {shapes}: all must be (N, C, H, W) with the same N")
    return views[0].shape[0]


def encode_views(backbone: nn.Module, views) -> torch.Tensor:
    """Backbone features of every view, one forward per resolution: V x (N, 3, H_v, W_v) -> (V * N, F).

    Views with equal (H, W) are concatenated into one batch (multi-crop: one forward for the global
    crops, one for the local crops); rows come back in view order (view 0's N rows first).
    """
    groups: dict[tuple, list[int]] = {}
    for i, v in enumerate(views):
        groups.setdefault(tuple(v.shape[-2:]), []).append(i)
    if len(groups) == 1:
        return backbone(torch.cat(list(views)))
    n = views[0].shape[0]
    out: list[torch.Tensor | None] = [None] * len(views)
    for idx in groups.values():
        feats = backbone(torch.cat([views[i] for i in idx]))
        for j, i in enumerate(idx):
            out[i] = feats[j * n : (j + 1) * n]
    return torch.cat(out)


@contextlib.contextmanager
def preserved_norm_buffers(module: nn.Module):
    """Restore every BatchNorm-style running buffer (mean, var, num_batches_tracked) of `module` on exit."""
    saved = [(buf, buf.clone()) for m in module.modules() if isinstance(m, nn.modules.batchnorm._NormBase)
             for buf in m.buffers(recurse=False)]
    try:
        yield
    finally:
        with torch.no_grad():
            for buf, copy in saved:
                buf.copy_(copy)


def step_generator(seed: int, step: int) -> torch.Generator:
    """A CPU generator that is a pure function of (seed, step, rank): a resumed run draws what an
    uninterrupted one drew at the same step (used for i-Mix's mixing)."""
    from ssl_aug import distributed as dist_utils

    return torch.Generator().manual_seed((seed * 1_000_003 + int(step) * 7919 + dist_utils.rank() * 104_729)
                                         % (2 ** 62))
