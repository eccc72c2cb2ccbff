"""The exported encoder module and the torchvision layout it promises.

`Encoder`: preprocessing + backbone: PIL images, uint8 [0, 255] or float [0, 1] tensors (N, 3, H, W)
-> (N, D) features, normalised with the encoder's own mean/std. `Normalized`: the traceable core
(float [0, 1] (N, 3, H, W) -> (N, D)) that ONNX and torch.export files hold. `torchvision_backbone(arch)`:
the documented torchvision module for a ResNet name (``cifar_*`` get the 3x3 stride-1 stem without
max-pool). `export_program(module, size)`: torch.export bytes (``torch.export.load``).
"""

from __future__ import annotations

import io

import torch
from torch import nn

from ssl_aug.errors import SslAugError
from ssl_aug.export.inputs import FLOAT_TOLERANCE, image_batch

__all__ = ["Encoder", "Normalized", "torchvision_backbone", "torchvision_name", "stem", "load_strict",
           "build_and_load", "export_program", "CIFAR_STEM", "TORCHVISION_STEM", "FLOAT_TOLERANCE"]

CIFAR_STEM = "conv1 = Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False); maxpool = Identity()"
TORCHVISION_STEM = ("torchvision default: conv1 = Conv2d(3, 64, kernel_size=7, stride=2, padding=3, "
                    "bias=False); maxpool = MaxPool2d(3, 2, 1)")


class Normalized(nn.Module):
    """float images in [0, 1] (N, 3, H, W) -> backbone((x - mean) / std) features (N, D); no checks, so
    it traces (ONNX, torch.export)."""

    def __init__(self, backbone: nn.Module, mean, std):
        super().__init__()
        self.backbone = backbone
        self.register_buffer("norm_mean", torch.tensor([float(v) for v in mean]).view(1, 3, 1, 1))
        self.register_buffer("norm_std", torch.tensor([float(v) for v in std]).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone((x - self.norm_mean) / self.norm_std)


class Encoder(Normalized):
    """Preprocessing + backbone: images -> (N, D) features, normalised with the encoder's mean/std.

    Input: a PIL image or a list of them (converted to RGB; resized so the shorter side is
    `input_size`, then centre-cropped, when `input_size` is known), a uint8 [0, 255] or float [0, 1]
    tensor (N, 3, H, W) or (3, H, W), or a uint8 numpy array (N, H, W, 3). Float input outside [0, 1]
    (0-255 floats, already-normalised images) is refused: it would give wrong features silently.
    Attributes: `mean`, `std` (3 floats each), `feature_dim`, `input_size` (int or None), `metadata`.

    Example:
        >>> enc = Encoder(torch.nn.Sequential(torch.nn.Flatten(1), torch.nn.LazyLinear(4)), (0.5,) * 3,
        ...               (0.25,) * 3, 4)
        >>> enc(torch.zeros(2, 3, 8, 8, dtype=torch.uint8)).shape
        torch.Size([2, 4])
    """

    def __init__(self, backbone: nn.Module, mean, std, feature_dim: int, metadata: dict | None = None,
                 input_size: int | None = None):
        super().__init__(backbone, mean, std)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.feature_dim = int(feature_dim)
        self.metadata = dict(metadata or {})
        size = input_size if input_size is not None else (self.metadata.get("input") or {}).get("size")
        self.input_size = int(size) if isinstance(size, int) else None

    def forward(self, images) -> torch.Tensor:
        x = image_batch(images, self.input_size, self.norm_mean.dtype).to(self.norm_mean.device)
        return super().forward(x)


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


def export_program(module: nn.Module, size: int | None) -> bytes:
    """torch.export bytes of `module` (float [0, 1] images (N, 3, size, size) -> features), batch size
    dynamic; load with ``torch.export.load(f).module()``: no ssl_aug needed."""
    size = size or 32
    example = torch.rand(2, 3, size, size, device=next(module.buffers()).device)
    program = torch.export.export(module.eval(), (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    buf = io.BytesIO()
    torch.export.save(program, buf)
    return buf.getvalue()
