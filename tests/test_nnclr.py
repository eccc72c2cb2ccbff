"""NNCLR: nearest neighbour and loss against plain loops, support queue, exact resume, export, bad input."""

import math

import pytest
import torch

from method_checks import check_exact_resume, check_export, method_config
from ssl_aug.errors import SslAugError
from ssl_aug.losses.nnclr import nearest_neighbours, nnclr_loss
from ssl_aug.methods import METHODS, build_method
from ssl_aug.models import build_backbone

SMALL = {"name": "nnclr", "proj_hidden_dim": 32, "proj_dim": 16, "pred_hidden_dim": 32, "support_size": 64}


def unit(v):
    return v.double() / math.sqrt(float(v.double() @ v.double()))


def test_nearest_neighbour_matches_a_loop():
    g = torch.Generator().manual_seed(0)
    z, support = torch.randn(5, 4, generator=g), torch.randn(9, 4, generator=g)
    got = nearest_neighbours(z, support)
    for i in range(5):
        best = max(range(9), key=lambda j: float(unit(z[i]) @ unit(support[j])))
        assert torch.equal(got[i], support[best])
    assert torch.equal(nearest_neighbours(support[:3] * 2.0, support), support[:3])  # itself, whatever the scale


def test_loss_matches_plain_loops():
    g = torch.Generator().manual_seed(1)
    a, p = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    total = 0.0
    for i in range(6):
        logits = [float(unit(a[i]) @ unit(p[j])) / 0.1 for j in range(6)]
        total += -logits[i] + math.log(sum(math.exp(x) for x in logits))
    assert float(nnclr_loss(a, p, 0.1)) == pytest.approx(total / 6, rel=1e-5)


def small(**kw):
    torch.manual_seed(0)
    args = {k: v for k, v in SMALL.items() if k != "name"}
    return build_method("nnclr", build_backbone("small_cnn", widths=[8, 8, 16, 16]), **{**args, **kw})


def views(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 3, 16, 16, generator=g) for _ in range(2)]


def test_forward_uses_the_support_set_and_pushes_view_one():
    assert "nnclr" in METHODS
    method = small()
    support_before = method.support.queue.clone()
    loss, stats = method(views())
    loss.backward()
    with torch.no_grad():
        z = method.projector(method.backbone(torch.cat(views()))).view(2, 8, -1)
        p = method.predictor(z.flatten(0, 1)).view(2, 8, -1)
    nn1, nn2 = nearest_neighbours(z[0], support_before), nearest_neighbours(z[1], support_before)
    expected = (nnclr_loss(nn1, p[1], 0.1) + nnclr_loss(nn2, p[0], 0.1)) / 2
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-4)
    torch.testing.assert_close(method.support.queue[:8], torch.nn.functional.normalize(z[0], dim=1),
                               rtol=0, atol=1e-5)
    assert set(stats) == {"loss", "nn_sim"}
    assert all(p.grad is not None for p in method.predictor.parameters())
    assert not any(b.requires_grad for b in method.support.buffers())


def test_bad_input_is_one_line():
    with pytest.raises(SslAugError, match="support_size=4 is not allowed with 8 images per rank"):
        small(support_size=4)(views())
    with pytest.raises(SslAugError, match="temperature(=0 is not allowed|' must be > 0, got 0)"):
        small(temperature=0)
    with pytest.raises(SslAugError, match="unknown option.*queue_length.*allowed are proj_hidden_dim"):
        small(queue_length=64)


def config(tmp_path, **train):
    return method_config(tmp_path, SMALL, **train)


def test_exact_resume(tmp_path):
    check_exact_resume(tmp_path, config)


def test_export_keeps_the_backbone(tmp_path):
    check_export(tmp_path, config, "backbone", dropped=("support",), heads=("projector", "predictor"))


def test_shipped_recipes_build():
    from ssl_aug.config import load_recipe
    from ssl_aug.train.setup import build_model

    for name in ("nnclr_embedded", "nnclr_cifar10_cpu", "nnclr_cifar10"):
        assert build_model(load_recipe(name)).name == "nnclr"
