"""The invariance probe runs any registered op (or a kornia.augmentation op) by name."""

import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torch import nn

from ssl_aug.errors import SslAugError
from ssl_aug.evaluation.invariance import invariance_probe, op_transform


def images(n=6, side=24):
    return torch.randint(0, 256, (n, 3, side, side), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


def test_op_switched_off_is_the_identity():
    x = images()
    assert torch.equal(op_transform("grayscale", grayscale_p=0.0)(x), x)
    assert torch.equal(op_transform("blur", p=0.0)(x), x)


def test_builtin_ops_by_name_match_torchvision():
    x = images()
    gray = TF.rgb_to_grayscale(x, num_output_channels=3)
    assert (op_transform("grayscale")(x).int() - gray.int()).abs().max() <= 1
    sol = TF.solarize(x.float() / 255, 0.5)
    assert (op_transform("solarize", threshold=0.5)(x).float() - sol * 255).abs().max() <= 0.51
    flip = op_transform("crop", scale=(1.0, 1.0), flip_p=1.0)(x)
    assert torch.equal(flip, TF.horizontal_flip(x))


def test_kornia_op_by_name_is_seeded():
    x = images()
    a, b = op_transform("RandomErasing", seed=1)(x), op_transform("RandomErasing", seed=1)(x)
    assert torch.equal(a, b) and not torch.equal(a, x)
    assert not torch.equal(a, op_transform("RandomErasing", seed=2)(x))


def test_probe_reports_requested_ops():
    torch.manual_seed(0)
    enc = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    out = invariance_probe(enc, images(8), (0.5,) * 3, (0.25,) * 3, transforms={"identity": [lambda x: x]},
                           ops={"blur": {"sigma": [1.5, 1.5]}, "RandomPerspective": {"distortion_scale": 0.5}})
    fam = out["families"]
    assert set(fam) == {"identity", "blur", "RandomPerspective"}
    assert fam["identity"]["score"] == pytest.approx(1.0, abs=1e-4)
    assert fam["blur"]["sim"] < fam["identity"]["sim"] and fam["RandomPerspective"]["sim"] < fam["identity"]["sim"]
    with pytest.raises(SslAugError, match="unknown op 'warp'") as e:
        op_transform("warp")
    assert "\n" not in str(e.value)
