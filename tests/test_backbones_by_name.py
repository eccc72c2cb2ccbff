"""Backbones by name (torchvision:NAME, timm:NAME) and per-backbone options, so a switch is one override."""

import pytest
import torch

from ssl_aug.config import config_from_dict
from ssl_aug.errors import SslAugError
from ssl_aug.models import backbone_args_for, build_backbone
from ssl_aug.train import build_model


def test_torchvision_backbone_by_name_probes_its_feature_dim():
    model = build_backbone("torchvision:resnet34")
    assert model.feature_dim == 512
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 512)
    small = build_backbone("torchvision:mobilenet_v3_small")
    assert small(torch.zeros(2, 3, 32, 32)).shape == (2, small.feature_dim)


def test_timm_backbone_by_name():
    pytest.importorskip("timm")
    model = build_backbone("timm:resnet10t")
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, model.feature_dim)


@pytest.mark.parametrize("name, message", [
    ("torchvision:nope", "unknown torchvision model 'nope'"),
    ("nope", "unknown backbone 'nope': use one of cifar_resnet18"),
])
def test_unknown_names_are_one_line(name, message):
    with pytest.raises(SslAugError, match=message):
        build_backbone(name)


def test_per_backbone_tables_make_a_switch_one_override():
    args = {"small_cnn": {"widths": [8, 16]}}
    assert backbone_args_for("small_cnn", args) == {"widths": [8, 16]}
    assert backbone_args_for("cifar_resnet18", args) == {}
    assert backbone_args_for("small_cnn", {"widths": [8]}) == {"widths": [8]}  # the flat form still works
    with pytest.raises(SslAugError, match="mixes per-backbone tables"):
        backbone_args_for("small_cnn", {"small_cnn": {"widths": [8]}, "widths": [8]})
    recipe = {"model": {"backbone": "small_cnn", "backbone_args": args},
              "method": {"name": "simclr", "proj_hidden_dim": 16, "proj_dim": 8}}
    assert build_model(config_from_dict(recipe)).backbone.feature_dim == 16
    recipe["model"]["backbone"] = "cifar_resnet18"  # the one override
    assert build_model(config_from_dict(recipe)).backbone.feature_dim == 512
