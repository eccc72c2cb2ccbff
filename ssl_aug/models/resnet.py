"""torchvision ResNet backbones returning pooled features (fc = Identity), randomly initialised.

``cifar_resnet18`` swaps the stem for a 3x3 stride-1 convolution and drops the max-pool (the usual
CIFAR variant); all other keys keep torchvision's layout, so ``backbone.state_dict()`` loads with
``strict=True`` into ``torchvision.models.resnet18()`` given the same stem / max-pool change and
``fc = Identity`` (or ``strict=False`` with only ``fc.*`` missing).
"""

from __future__ import annotations

import torch.nn as nn
from torchvision.models import resnet18 as _tv_resnet18
from torchvision.models import resnet50 as _tv_resnet50

__all__ = ["cifar_resnet18", "resnet18", "resnet50", "cifar_stem_"]


def _headless(model: nn.Module) -> nn.Module:
    model.feature_dim = model.fc.in_features
    model.fc = nn.Identity()
    return model


def cifar_stem_(model: nn.Module) -> nn.Module:
    """Replace a torchvision ResNet's stem in place: conv1 3x3 stride 1 padding 1 (no bias), no max-pool."""
    model.conv1 = nn.Conv2d(3, model.conv1.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()
    return model


def resnet18(zero_init_residual: bool = False) -> nn.Module:
    """torchvision ResNet-18, (N, 3, H, W) -> (N, 512)."""
    return _headless(_tv_resnet18(weights=None, zero_init_residual=zero_init_residual))


def resnet50(zero_init_residual: bool = False) -> nn.Module:
    """torchvision ResNet-50, (N, 3, H, W) -> (N, 2048)."""
    return _headless(_tv_resnet50(weights=None, zero_init_residual=zero_init_residual))


def cifar_resnet18(zero_init_residual: bool = False) -> nn.Module:
    """ResNet-18 with the CIFAR stem (3x3 stride-1 conv, no max-pool), (N, 3, 32, 32) -> (N, 512)."""
    return cifar_stem_(resnet18(zero_init_residual=zero_init_residual))
