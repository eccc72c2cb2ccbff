"""The files that let any environment load an exported encoder without ssl_aug.

`standalone_config(arch, args, mean, std, size, feature_dim)` -> the ``config.json`` dict; for ``timm:``
backbones it is also timm's own model config, so ``timm.create_model("local-dir:EXPORT", pretrained=True)``
loads ``model.safetensors`` through timm's ``pretrained_cfg``. `MODEL_PY` is the source of ``model.py``:
plain torch module definitions (small_cnn written out; ResNets and ``torchvision:`` models through
torchvision; ``timm:`` through timm) plus ``load(folder)`` returning an eval-mode encoder that takes uint8
[0, 255] or float [0, 1] images (N, 3, H, W) and gives (N, D) features. It reads weights with
safetensors only (no pickle).
"""

from __future__ import annotations

from ssl_aug.export.encoder import torchvision_name

__all__ = ["standalone_config", "MODEL_PY", "WEIGHTS_FILE", "CONFIG_FILE", "MODEL_FILE"]

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
MODEL_FILE = "model.py"


def standalone_config(arch: str, args: dict, mean, std, size, feature_dim: int) -> dict:
    """``config.json``: what ``model.py`` needs to rebuild the backbone (and timm's keys for timm models)."""
    config = {"backbone": arch, "backbone_args": dict(args), "mean": list(mean), "std": list(std),
              "input_size": size, "feature_dim": int(feature_dim), "weights": WEIGHTS_FILE,
              "torchvision_resnet": torchvision_name(arch)}
    if arch.startswith("timm:"):
        config.update({"architecture": arch[len("timm:"):], "num_classes": 0, "num_features": int(feature_dim),
                       "model_args": dict(args),
                       "pretrained_cfg": {"mean": list(mean), "std": list(std), "num_classes": 0,
                                          "input_size": [3, size, size] if size else None}})
    return config


MODEL_PY = '''"""An encoder exported by ssl_aug, loadable without ssl_aug: needs torch and safetensors (plus
torchvision for ResNet / torchvision backbones, timm for timm backbones).

    import model                      # this file, from the export folder
    encoder = model.load()            # eval mode; or model.load("path/to/export", device="cuda")
    features = encoder(images)        # images: uint8 [0, 255] or float [0, 1], (N, 3, H, W) -> (N, D)

Weights: model.safetensors (the backbone's state_dict); architecture and normalisation: config.json.
"""

import json
import os

import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
CLASSIFIER_NAMES = ("fc", "classifier", "head", "heads")


class SmallCNN(nn.Module):
    """Normalised images (N, 3, H, W) -> features (N, widths[-1]): conv3x3-BN-ReLU stages, 2x2 max-pool
    between stages, global average pool at the end."""

    def __init__(self, widths=(32, 64, 128, 256), in_channels=3):
        super().__init__()
        layers, channels = [], in_channels
        for i, width in enumerate(widths):
            layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True)]
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            channels = width
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.feature_dim = channels

    def forward(self, x):
        return self.features(x)


def build_backbone(config):
    """The backbone module named in config.json (random weights; load() fills them)."""
    arch, args = config["backbone"], dict(config.get("backbone_args") or {})
    if arch == "small_cnn":
        return SmallCNN(**args)
    if config.get("torchvision_resnet"):
        import torchvision

        model = getattr(torchvision.models, config["torchvision_resnet"])(weights=None, **args)
        if arch.startswith("cifar_"):
            model.conv1 = nn.Conv2d(3, model.conv1.out_channels, 3, 1, 1, bias=False)
            model.maxpool = nn.Identity()
        model.fc = nn.Identity()
        return model
    if arch.startswith("torchvision:"):
        import torchvision

        model = torchvision.models.get_model(arch.split(":", 1)[1], weights=None, **args)
        name = next(n for n in CLASSIFIER_NAMES if isinstance(getattr(model, n, None), nn.Module))
        setattr(model, name, nn.Identity())
        return model
    if arch.startswith("timm:"):
        import timm

        return timm.create_model(arch.split(":", 1)[1], pretrained=False, num_classes=0, **args)
    raise ValueError("unknown backbone " + repr(arch) + " in config.json")


class Encoder(nn.Module):
    """uint8 [0, 255] or float [0, 1] images (N, 3, H, W) -> backbone((x - mean) / std) features (N, D)."""

    def __init__(self, backbone, mean, std):
        super().__init__()
        self.backbone = backbone
        self.register_buffer("norm_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("norm_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, images):
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        return self.backbone((x - self.norm_mean) / self.norm_std)


def load(folder=HERE, device="cpu"):
    """The exported encoder, weights loaded strictly from model.safetensors, in eval mode on `device`."""
    from safetensors.torch import load_file

    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    backbone = build_backbone(config)
    backbone.load_state_dict(load_file(os.path.join(folder, config["weights"])), strict=True)
    return Encoder(backbone, config["mean"], config["std"]).to(device).eval()
'''
