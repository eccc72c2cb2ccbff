"""Backbones by name from torchvision (``torchvision:resnet34``) and timm (``timm:convnext_tiny``, optional
extra ``timm``), randomly initialised (no downloads), classifier removed, ``feature_dim`` probed.

Each returns an ``nn.Module`` mapping a normalised float batch (N, 3, H, W) to features (N, feature_dim).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ssl_aug.errors import SslAugError

__all__ = ["torchvision_backbone", "timm_backbone", "probe_feature_dim"]

CLASSIFIER_NAMES = ("fc", "classifier", "head", "heads")


def probe_feature_dim(model: nn.Module, sizes: tuple[int, ...] = (64, 224)) -> int:
    """Output width of `model` on a (2, 3, s, s) zero batch in eval mode (the first size that runs)."""
    was_training = model.training
    model.eval()
    error = None
    try:
        for s in sizes:
            try:
                with torch.no_grad():
                    out = model(torch.zeros(2, 3, s, s))
            except RuntimeError as exc:  # e.g. a ViT that only takes 224 px
                error = exc
                continue
            out = out[0] if isinstance(out, (tuple, list)) else out
            if out.dim() != 2:
                raise SslAugError(f"backbone gives features of shape {tuple(out.shape)}; it must give (N, D)")
            return int(out.shape[1])
    finally:
        model.train(was_training)
    raise SslAugError(f"could not probe the backbone's feature size on {sizes} px inputs: {error}")


def _drop_classifier(model: nn.Module, name: str) -> nn.Module:
    for attr in CLASSIFIER_NAMES:
        if isinstance(getattr(model, attr, None), nn.Module):
            setattr(model, attr, nn.Identity())
            return model
    raise SslAugError(f"backbone 'torchvision:{name}' has no classifier attribute ({', '.join(CLASSIFIER_NAMES)}) "
                      f"to remove; use a classification model such as torchvision:resnet34")


def torchvision_backbone(name: str, **kw) -> nn.Module:
    """``torchvision.models.get_model(name, weights=None, **kw)`` without its classifier."""
    from torchvision import models

    available = models.list_models(module=models)
    if name not in available:
        raise SslAugError(f"unknown torchvision model {name!r}: use one of torchvision.models.list_models(), "
                          f"e.g. {', '.join(sorted(m for m in available if m.startswith('resnet')))}")
    try:
        model = models.get_model(name, weights=None, **kw)
    except TypeError as exc:
        raise SslAugError(f"backbone 'torchvision:{name}' does not take {sorted(kw)}: {exc}") from None
    model = _drop_classifier(model, name)
    model.feature_dim = probe_feature_dim(model)
    return model


def timm_backbone(name: str, **kw) -> nn.Module:
    """``timm.create_model(name, pretrained=False, num_classes=0, **kw)`` (pooled features)."""
    try:
        import timm
    except ImportError:
        raise SslAugError("backbone 'timm:...' needs timm: pip install 'ssl_aug[timm]'") from None
    if not timm.is_model(name):
        raise SslAugError(f"unknown timm model {name!r}: see timm.list_models(), e.g. resnet34, convnext_atto")
    try:
        model = timm.create_model(name, pretrained=False, num_classes=0, **kw)
    except TypeError as exc:
        raise SslAugError(f"backbone 'timm:{name}' does not take {sorted(kw)}: {exc}") from None
    model.feature_dim = int(getattr(model, "num_features", 0)) or probe_feature_dim(model)
    return model
