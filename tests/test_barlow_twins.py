"""Barlow Twins: loss against numpy, zero for identical standardised decorrelated embeddings, resume, export."""

import numpy as np
import pytest
import torch

from method_checks import check_exact_resume, check_export, method_config
from ssl_aug.errors import SslAugError
from ssl_aug.losses.barlow_twins import barlow_twins_loss
from ssl_aug.methods import METHODS, build_method
from ssl_aug.models import build_backbone

SMALL = {"name": "barlow_twins", "proj_hidden_dim": 32, "proj_dim": 16, "proj_layers": 2}


def numpy_loss(a, b, lambd):
    a, b = a.double().numpy(), b.double().numpy()
    n, d = a.shape
    na = (a - a.mean(0)) / np.sqrt(a.var(0) + 1e-5)
    nb = (b - b.mean(0)) / np.sqrt(b.var(0) + 1e-5)
    total = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(na[k, i] * nb[k, j] for k in range(n)) / n
            total += (1 - c) ** 2 if i == j else lambd * c ** 2
    return total


def test_loss_matches_numpy():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(10, 6, generator=g), torch.randn(10, 6, generator=g) * 3 + 1
    for lambd in (0.0051, 0.5):
        assert float(barlow_twins_loss(a, b, lambd)) == pytest.approx(numpy_loss(a, b, lambd), rel=1e-5)


def test_zero_for_identical_standardised_decorrelated_embeddings():
    z = torch.randn(32, 8, dtype=torch.float64)
    q, _ = torch.linalg.qr(z - z.mean(0))  # orthonormal, centred columns
    z = (q * np.sqrt(32)).float()  # standardised: mean 0, biased variance 1, correlation 0
    assert float(barlow_twins_loss(z, z)) < 1e-4
    assert float(barlow_twins_loss(z, 5 * z + 2)) < 1e-4  # invariant to a per-dimension affine map
    assert float(barlow_twins_loss(z, -z)) == pytest.approx(4.0 * 8, rel=1e-3)  # C = -I: (1 - (-1))^2 per dim


def test_lambda_must_be_positive():
    with pytest.raises(SslAugError, match=r"lambd=0 is not allowed: use a number > 0"):
        barlow_twins_loss(torch.randn(4, 3), torch.randn(4, 3), 0)
    with pytest.raises(SslAugError, match=r"lambd=-0.1 is not allowed: use a number > 0"):
        small(lambd=-0.1)


def small(**kw):
    torch.manual_seed(0)
    args = {k: v for k, v in SMALL.items() if k != "name"}
    return build_method("barlow_twins", build_backbone("small_cnn", widths=[8, 8, 16, 16]), **{**args, **kw})


def test_forward_and_stats():
    assert "barlow_twins" in METHODS
    method = small()
    loss, stats = method([torch.randn(8, 3, 16, 16) for _ in range(2)])
    loss.backward()
    assert set(stats) == {"loss", "on_diagonal", "off_diagonal"} and torch.isfinite(loss)
    assert any(p.grad is not None for p in method.backbone.parameters())
    with pytest.raises(SslAugError, match="unknown option.*gamma.*allowed are proj_hidden_dim"):
        small(gamma=1.0)


def config(tmp_path, **train):
    return method_config(tmp_path, SMALL, **train)


def test_exact_resume(tmp_path):
    check_exact_resume(tmp_path, config)


def test_export_keeps_the_backbone(tmp_path):
    check_export(tmp_path, config, "backbone", dropped=("backbone.",), heads=("projector",))


def test_shipped_recipes_build():
    from ssl_aug.config import load_recipe
    from ssl_aug.train.setup import build_model

    for name in ("barlow_twins_embedded", "barlow_twins_cifar10_cpu", "barlow_twins_cifar10"):
        assert build_model(load_recipe(name)).name == "barlow_twins"
