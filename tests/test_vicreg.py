"""VICReg: loss against numpy, the paper's zero-loss case, exact resume, export, bad input."""

import numpy as np
import pytest
import torch

from method_checks import check_exact_resume, check_export, method_config
from ssl_aug.errors import SslAugError
from ssl_aug.losses.vicreg import vicreg_loss
from ssl_aug.methods import METHODS, build_method
from ssl_aug.models import build_backbone

SMALL = {"name": "vicreg", "proj_hidden_dim": 32, "proj_dim": 16, "proj_layers": 2}


def numpy_loss(a, b, lam=25.0, mu=25.0, nu=1.0, gamma=1.0):
    a, b = a.double().numpy(), b.double().numpy()
    n, d = a.shape
    inv = ((a - b) ** 2).mean()

    def var(z):
        return np.maximum(0.0, gamma - np.sqrt(z.var(axis=0, ddof=1) + 1e-4)).mean()

    def cov(z):
        c = np.cov(z, rowvar=False)
        return sum(c[i, j] ** 2 for i in range(d) for j in range(d) if i != j) / d

    return lam * inv + mu * (var(a) + var(b)) / 2 + nu * (cov(a) + cov(b))


def test_loss_matches_numpy():
    g = torch.Generator().manual_seed(0)
    a, b = 0.7 * torch.randn(9, 5, generator=g), torch.randn(9, 5, generator=g)
    assert float(vicreg_loss(a, b)) == pytest.approx(numpy_loss(a, b), rel=1e-5)
    assert float(vicreg_loss(a, b, 1.0, 2.0, 3.0, 0.5)) == pytest.approx(numpy_loss(a, b, 1.0, 2.0, 3.0, 0.5), rel=1e-5)
    _, terms = vicreg_loss(a, b, return_terms=True)
    assert set(terms) == {"invariance", "variance", "covariance"}


def test_zero_for_identical_decorrelated_spread_embeddings():
    """Invariance 0 (same embedding), variance 0 (every std >= gamma), covariance 0 (orthogonal centred columns)."""
    z = torch.randn(16, 4, dtype=torch.float64)
    q, _ = torch.linalg.qr(z - z.mean(0))  # orthonormal columns in the span of centred vectors: centred too
    z = (q * 8.0).float()  # std per column 8 / sqrt(15) > gamma = 1
    assert float(vicreg_loss(z, z)) < 1e-4
    assert float(vicreg_loss(z, z + 1.0)) == pytest.approx(25.0, rel=1e-4)  # only the invariance term moves


def small(**kw):
    torch.manual_seed(0)
    args = {k: v for k, v in SMALL.items() if k != "name"}
    return build_method("vicreg", build_backbone("small_cnn", widths=[8, 8, 16, 16]), **{**args, **kw})


def test_forward_and_stats():
    assert "vicreg" in METHODS
    method = small()
    loss, stats = method([torch.randn(8, 3, 16, 16) for _ in range(2)])
    loss.backward()
    assert set(stats) == {"loss", "invariance", "variance", "covariance"} and torch.isfinite(loss)
    assert any(p.grad is not None for p in method.backbone.parameters())
    assert method.health_messages({"variance": torch.tensor(0.99)})
    assert not method.health_messages({"variance": torch.tensor(0.1)})


def test_bad_options_are_one_line():
    with pytest.raises(SslAugError, match="std_coeff=-1 is not allowed"):
        small(std_coeff=-1)
    with pytest.raises(SslAugError, match="unknown option.*lambd.*allowed are proj_hidden_dim"):
        small(lambd=0.1)


def config(tmp_path, **train):
    return method_config(tmp_path, SMALL, **train)


def test_exact_resume(tmp_path):
    check_exact_resume(tmp_path, config)


def test_export_keeps_the_backbone(tmp_path):
    check_export(tmp_path, config, "backbone", dropped=("backbone.",), heads=("projector",))


def test_shipped_recipes_build():
    from ssl_aug.config import load_recipe
    from ssl_aug.train.setup import build_model

    for name in ("vicreg_embedded", "vicreg_cifar10_cpu", "vicreg_cifar10"):
        assert build_model(load_recipe(name)).name == "vicreg"
