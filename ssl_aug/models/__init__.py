"""Backbone registry and heads.

``build_backbone(name, **kw)`` returns an ``nn.Module`` mapping a normalised float batch
(N, 3, H, W) to features (N, feature_dim), with the int attribute ``feature_dim``.
"""

from __future__ import annotations

import inspect
from typing import Callable

import torch.nn as nn

from ssl_aug.errors import SslAugError
from ssl_aug.models.heads import ProjectionHead, Prototypes
from ssl_aug.models.resnet import cifar_resnet18, resnet18, resnet50

__all__ = ["BACKBONES", "build_backbone", "ProjectionHead", "Prototypes"]


def _small_cnn_class() -> type:
    try:
        from ssl_aug.models.small_cnn import SmallCNN
    except ImportError as exc:
        others = ", ".join(k for k in sorted(BACKBONES) if k != "small_cnn")
        raise SslAugError(f"backbone 'small_cnn' is unavailable ({exc}): use one of {others}") from exc
    return SmallCNN


def small_cnn(**kw) -> nn.Module:
    """The small CPU-friendly CNN of ``ssl_aug.models.small_cnn`` (imported on first use)."""
    return _small_cnn_class()(**kw)


BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "cifar_resnet18": cifar_resnet18,
    "resnet18": resnet18,
    "resnet50": resnet50,
    "small_cnn": small_cnn,
}


def build_backbone(name: str, **kw) -> nn.Module:
    """Build a registered backbone (random init, no downloads); unknown names/kwargs -> SslAugError."""
    if name not in BACKBONES:
        raise SslAugError(f"unknown backbone {name!r}: use one of {', '.join(sorted(BACKBONES))}")
    builder = BACKBONES[name]
    if builder is small_cnn:
        builder = _small_cnn_class()
    params = {k: p for k, p in inspect.signature(builder).parameters.items() if k != "self"}
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(kw) - set(params))
        if unknown:
            raise SslAugError(
                f"unknown option(s) {', '.join(unknown)} for backbone {name!r}: "
                f"allowed are {', '.join(params) or 'none'}"
            )
    model = builder(**kw)
    if not isinstance(getattr(model, "feature_dim", None), int):
        raise SslAugError(f"backbone {name!r} does not define an integer feature_dim")
    return model
