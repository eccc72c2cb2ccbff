"""Backbone registry and heads.

``build_backbone(name, **kw)`` returns an ``nn.Module`` mapping a normalised float batch
(N, 3, H, W) to features (N, feature_dim), with the int attribute ``feature_dim``. Names: the registry
``BACKBONES``, ``torchvision:NAME`` (any torchvision classification model) and ``timm:NAME`` (extra ``timm``).
``backbone_args_for(name, args)``: recipe ``model.backbone_args`` may be one flat table (for the chosen
backbone) or tables keyed by backbone name, so switching backbones is one override.
"""

from __future__ import annotations

import inspect
from typing import Callable

import torch.nn as nn

from ssl_aug.errors import SslAugError
from ssl_aug.models.external import timm_backbone, torchvision_backbone
from ssl_aug.models.heads import (BYOLPredictionHead, BYOLProjectionHead, ProjectionHead, Prototypes,
                                  SimCLRProjectionHead, SwaVProjectionHead)
from ssl_aug.models.resnet import cifar_resnet18, resnet18, resnet50
from ssl_aug.registry import Registry

__all__ = ["BACKBONES", "register_backbone", "list_backbones", "get_backbone", "build_backbone", "backbone_args_for",
           "ProjectionHead", "SimCLRProjectionHead", "SwaVProjectionHead", "BYOLProjectionHead", "BYOLPredictionHead",
           "Prototypes"]
PREFIXED = {"torchvision": torchvision_backbone, "timm": timm_backbone}


def _small_cnn_class() -> type:
    try:
        from ssl_aug.models.small_cnn import SmallCNN
    except ImportError as exc:
        others = ", ".join(k for k in sorted(BACKBONES) if k != "small_cnn")
        raise SslAugError(f"backbone 'small_cnn' is unavailable ({exc}): use one of {others}") from exc
    return SmallCNN


def build_small_cnn(**kw) -> nn.Module:
    """The small CPU-friendly CNN of ``ssl_aug.models.small_cnn`` (imported on first use; the function is not
    named small_cnn: importing that submodule rebinds the package attribute of the same name)."""
    return _small_cnn_class()(**kw)


BACKBONES = Registry("backbone")
register_backbone = BACKBONES.register
register_backbone("cifar_resnet18", cifar_resnet18)
register_backbone("resnet18", resnet18)
register_backbone("resnet50", resnet50)
register_backbone("small_cnn", build_small_cnn)


def list_backbones() -> list[str]:
    """Registered backbone names (besides torchvision:NAME and timm:NAME)."""
    return BACKBONES.names()


def get_backbone(name: str) -> Callable[..., nn.Module]:
    """The builder registered as `name` (one-line error with the choices otherwise)."""
    return BACKBONES.get(name)


def _is_backbone_name(name: str) -> bool:
    return name in BACKBONES or name.split(":", 1)[0] in PREFIXED and ":" in name


def backbone_args_for(name: str, args: dict) -> dict:
    """The options for backbone `name` from a recipe's ``model.backbone_args``: a flat table is used as is;
    a table keyed by backbone names (e.g. ``{small_cnn = {widths = [...]}}``) gives `name`'s entry ({} if none)."""
    keyed = [k for k, v in args.items() if _is_backbone_name(k) and isinstance(v, dict)]
    if keyed and len(keyed) != len(args):
        flat = sorted(set(args) - set(keyed))
        raise SslAugError(f"recipe key 'model.backbone_args' mixes per-backbone tables ({', '.join(keyed)}) with "
                          f"plain options ({', '.join(flat)}); use one form")
    return dict(args.get(name, {})) if keyed else dict(args)


def build_backbone(name: str, **kw) -> nn.Module:
    """Build a backbone (random init, no downloads): a registered name, ``torchvision:NAME`` or
    ``timm:NAME``; unknown names/kwargs -> SslAugError."""
    prefix, _, rest = name.partition(":")
    if rest and prefix in PREFIXED:
        return PREFIXED[prefix](rest, **kw)
    if name not in BACKBONES:
        raise SslAugError(f"unknown backbone {name!r}: use one of {', '.join(sorted(BACKBONES))}, "
                          f"torchvision:NAME or timm:NAME")
    builder = get_backbone(name)
    if builder is build_small_cnn:  # the class's own signature tells its options
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
