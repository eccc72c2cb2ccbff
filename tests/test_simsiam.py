"""SimSiam: loss against plain loops, stop-gradient, collapse monitor, exact resume, export, bad input."""

import math

import pytest
import torch

from method_checks import check_exact_resume, check_export, method_config
from ssl_aug.errors import SslAugError
from ssl_aug.losses.simsiam import simsiam_loss
from ssl_aug.methods import METHODS, build_method
from ssl_aug.models import build_backbone

SMALL = {"name": "simsiam", "proj_hidden_dim": 32, "proj_dim": 16, "pred_hidden_dim": 8, "proj_layers": 2}


def loop_loss(p, z):
    v, n, _ = p.shape
    total = 0.0
    for a in range(v):
        for b in range(v):
            if a != b:
                for i in range(n):
                    pa, zb = p[a, i].double(), z[b, i].double()
                    total -= float(pa @ zb) / math.sqrt(float(pa @ pa) * float(zb @ zb)) / n
    return total / (v * (v - 1))


@pytest.mark.parametrize("v", [2, 3])
def test_loss_matches_plain_loops(v):
    g = torch.Generator().manual_seed(v)
    p, z = torch.randn(v, 5, 7, generator=g), torch.randn(v, 5, 7, generator=g)
    assert float(simsiam_loss(p, z)) == pytest.approx(loop_loss(p, z), abs=1e-6)


def test_loss_invariances_and_stop_gradient():
    z = torch.randn(2, 4, 6)
    assert float(simsiam_loss(z.flip(0), z)) == pytest.approx(-1.0, abs=1e-6)  # p_1 = z_2, p_2 = z_1
    assert float(simsiam_loss(3.0 * z.flip(0), 0.5 * z)) == pytest.approx(-1.0, abs=1e-6)  # scale-free
    p = torch.randn(2, 4, 6, requires_grad=True)
    zz = torch.randn(2, 4, 6, requires_grad=True)
    simsiam_loss(p, zz).backward()
    assert p.grad is not None and zz.grad is None
    with pytest.raises(SslAugError, match=r"\(V, N, D\) with V >= 2"):
        simsiam_loss(torch.randn(1, 4, 6), torch.randn(1, 4, 6))


def small(**kw):
    torch.manual_seed(0)
    args = {k: v for k, v in SMALL.items() if k != "name"}
    return build_method("simsiam", build_backbone("small_cnn", widths=[8, 8, 16, 16]), **{**args, **kw})


def test_forward_trains_and_reports_spread():
    assert "simsiam" in METHODS
    method = small()
    views = [torch.randn(8, 3, 16, 16) for _ in range(2)]
    loss, stats = method(views)
    loss.backward()
    assert set(stats) == {"loss", "z_std"} and -1.0 <= float(loss) <= 1.0
    assert all(p.grad is not None for p in method.predictor.parameters())
    assert any(p.grad is not None for p in method.backbone.parameters())
    assert method.health_messages({"z_std": torch.tensor(0.0)})
    assert not method.health_messages({"z_std": torch.tensor(1.0 / 4)})


def test_bad_options_are_one_line():
    with pytest.raises(SslAugError, match="pred_hidden_dim(=0 is not allowed|' must be >= 1 and <= 65536, got 0)"):
        small(pred_hidden_dim=0)
    with pytest.raises(SslAugError, match="unknown option.*momentum.*allowed are proj_hidden_dim"):
        small(momentum=0.9)


def config(tmp_path, **train):
    return method_config(tmp_path, SMALL, **train)


def test_exact_resume(tmp_path):
    check_exact_resume(tmp_path, config)


def test_export_keeps_the_backbone(tmp_path):
    check_export(tmp_path, config, "backbone", dropped=("backbone.",), heads=("projector", "predictor"))


def test_shipped_recipes_build():
    from ssl_aug.config import load_recipe
    from ssl_aug.train.setup import build_model

    for name in ("simsiam_embedded", "simsiam_cifar10_cpu", "simsiam_cifar10"):
        assert build_model(load_recipe(name)).name == "simsiam"
