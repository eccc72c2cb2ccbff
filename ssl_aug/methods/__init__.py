"""Self-supervised methods: ``SimCLR`` and ``SwAV``, built by name with :func:`build_method`.

Every method is an ``nn.Module`` with ``backbone`` and ``projector`` (SwAV also ``prototypes``),
``forward(views, step=0, epoch=0) -> (loss, stats)``, ``after_backward(step)`` and
``health_messages(stats) -> list[str]`` (call it when logging; it reads the stats on the host).
"""

from __future__ import annotations

import inspect

import torch.nn as nn

from ssl_aug.errors import SslAugError
from ssl_aug.methods.simclr import SimCLR
from ssl_aug.methods.swav import SwAV

__all__ = ["METHODS", "build_method", "method_options", "SimCLR", "SwAV"]

METHODS: dict[str, type[nn.Module]] = {"simclr": SimCLR, "swav": SwAV}


def method_options(name: str) -> dict[str, object]:
    """Keyword options of a method and their defaults (everything but ``backbone``)."""
    if name not in METHODS:
        raise SslAugError(f"unknown method {name!r}: use one of {', '.join(sorted(METHODS))}")
    params = inspect.signature(METHODS[name].__init__).parameters
    return {k: p.default for k, p in params.items() if k not in ("self", "backbone")}


def build_method(name: str, backbone: nn.Module, **kw) -> nn.Module:
    """Wrap ``backbone`` (with ``feature_dim``) in a method; unknown names/options -> SslAugError."""
    allowed = method_options(name)
    unknown = sorted(set(kw) - set(allowed))
    if unknown:
        raise SslAugError(
            f"unknown option(s) {', '.join(unknown)} for method {name!r}: allowed are {', '.join(allowed)}"
        )
    return METHODS[name](backbone, **kw)
