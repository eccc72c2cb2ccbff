"""The exported encoder module and the torchvision layout it promises.

`Encoder`: preprocessing + backbone, images (N, 3, H, W) uint8 [0, 255] or float [0, 1] -> (N, D)
features. `torchvision_backbone(arch)`: the documented torchvision module for a ResNet name
(``cifar_*`` get the 3x3 stride-1 stem without max-pool). `script(encoder, size)`: TorchScript bytes.
"""

from __future__ import annotations

import io
import warnings

import torch
from torch import nn

from ssl_aug.errors import SslAugError

__all__ = ["Encoder", "torchvision_backbone", "torchvision_name", "stem", "load_strict", "build_and_load", "script",
           "CIFAR_STEM", "TORCHVISION_STEM", "FLOAT_TOLERANCE"]

CIFAR_STEM = "conv1 = Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False); maxpool = Identity()"
TORCHVISION_STEM = ("torchvision default: conv1 = Conv2d(3, 64, kernel_size=7, stride=2, padding=3, "
                    "bias=False); maxpool = MaxPool2d(3, 2, 1)")
FLOAT_TOLERANCE = 0.01  # float input may overshoot [0, 1] this much (bicubic resampling); more is refused


class Encoder(nn.Module):
    """Preprocessing + backbone: images (N, 3, H, W) uint8 [0, 255] or float [0, 1] -> (N, D) features.

    Float input outside [0, 1] (e.g. 0-255 floats or already-normalised images) is refused: it would
    give garbage features silently. Attributes: `mean`, `std` (3 floats each), `feature_dim`,
    `metadata` (dict; empty when scripted).
    """

    def __init__(self, backbone: nn.Module, mean, std, feature_dim: int, metadata: dict | None = None):
        super().__init__()
        self.backbone = backbone
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.feature_dim = int(feature_dim)
        self.metadata = dict(metadata or {})
        self.register_buffer("norm_mean", torch.tensor(self.mean).view(1, 3, 1, 1))
        self.register_buffer("norm_std", torch.tensor(self.std).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.size(1) != 3:
            raise SslAugError("encoder input must be images (N, 3, H, W), got shape "
                              + str(list(images.shape)))
        if images.dtype == torch.uint8:
            x = images.to(self.norm_mean.dtype) / 255.0
        elif images.is_floating_point():
            x = images.to(self.norm_mean.dtype)
            if x.numel() > 0:
                low = float(x.min())
                high = float(x.max())
                if low < -0.01 or high > 1.01:  # FLOAT_TOLERANCE (TorchScript needs literals)
                    raise SslAugError("encoder float input must be in [0, 1], got values from " + str(low)
                                      + " to " + str(high) + ": divide 0-255 floats by 255 (do not "
                                      "normalise: the encoder does), or pass uint8 images")
        else:
            raise SslAugError("encoder input must be uint8 [0, 255] or float [0, 1] images, "
                              "got an integer dtype")
        return self.backbone((x - self.norm_mean) / self.norm_std)


def torchvision_name(arch: str) -> str | None:
    """torchvision constructor name for ResNet backbones ('cifar_resnet18' -> 'resnet18'), else None."""
    name = arch[len("cifar_"):] if arch.startswith("cifar_") else arch
    return name if name.startswith("resnet") and name[len("resnet"):].isdigit() else None


def stem(arch: str) -> str:
    """A human description of the backbone's stem ('ssl_aug' for non-torchvision backbones)."""
    if torchvision_name(arch) is None:
        return "ssl_aug"
    return CIFAR_STEM if arch.startswith("cifar_") else TORCHVISION_STEM


def torchvision_backbone(arch: str) -> nn.Module:
    """The documented torchvision module for a ResNet backbone name, fc = Identity (features out).

    cifar_* names get the CIFAR stem: 3x3 stride-1 conv1 without bias, no max-pool.
    """
    import torchvision

    name = torchvision_name(arch)
    if name is None or not hasattr(torchvision.models, name):
        raise SslAugError(f"backbone {arch!r} has no torchvision equivalent; torchvision layouts exist for "
                          "resnet18, resnet34, resnet50, ... and their cifar_ variants")
    model = getattr(torchvision.models, name)(weights=None)
    if arch.startswith("cifar_"):
        model.conv1 = nn.Conv2d(3, model.conv1.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    model.feature_dim = model.fc.in_features
    model.fc = nn.Identity()
    return model


def _first_mismatches(expected: dict, got: dict, limit: int = 3) -> str:
    """Describe the first differing keys/shapes between two state_dicts (for one-line errors)."""
    missing = [k for k in expected if k not in got][:limit]
    unexpected = [k for k in got if k not in expected][:limit]
    shapes = [f"{k} {tuple(got[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in got and tuple(got[k].shape) != tuple(v.shape)][:limit]
    parts = []
    if missing:
        parts.append("missing " + ", ".join(missing))
    if unexpected:
        parts.append("unexpected " + ", ".join(unexpected))
    if shapes:
        parts.append("shape " + ", ".join(shapes))
    return "; ".join(parts)


def load_strict(module: nn.Module, state: dict, what: str) -> nn.Module:
    """module.load_state_dict(state, strict=True), with a one-line error naming the first mismatches."""
    expected = module.state_dict()
    if state.keys() != expected.keys() or any(state[k].shape != v.shape for k, v in expected.items()):
        raise SslAugError(f"{what} (architecture mismatch: {_first_mismatches(expected, state)})")
    module.load_state_dict(state, strict=True)
    return module


def build_and_load(arch: str, args: dict, state: dict, source) -> nn.Module:
    """ssl_aug's build_backbone(arch, **args) with `state` loaded strictly; one-line error on mismatch."""
    from ssl_aug.models import build_backbone

    return load_strict(build_backbone(arch, **args), state, f"{source} does not hold a {arch!r} backbone")


def script(encoder: Encoder, input_size: int | None) -> bytes:
    """TorchScript bytes of `encoder`; backbones that cannot be scripted are traced (features only)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit is deprecated in torch >= 2.9
        try:
            scripted = torch.jit.script(encoder)
        except Exception:  # noqa: BLE001 - any TorchScript front-end failure: trace the backbone instead
            size = input_size or 32
            example = torch.rand(2, 3, size, size, device=encoder.norm_mean.device)
            traced = torch.jit.trace(encoder.backbone, example)
            scripted = torch.jit.script(Encoder(traced, encoder.mean, encoder.std, encoder.feature_dim))
        buf = io.BytesIO()
        torch.jit.save(scripted, buf)
    return buf.getvalue()
