"""MoCo v3: loss against plain loops, symmetric form, exact EMA, no gradient into the key encoder,
exact resume, export of the query backbone, bad input."""

import math

import pytest
import torch

from method_checks import (check_ema_step, check_exact_resume, check_export, check_no_gradient_into,
                           method_config)
from ssl_aug.errors import SslAugError
from ssl_aug.losses.moco_v3 import moco_v3_loss
from ssl_aug.methods import METHODS, build_method
from ssl_aug.models import build_backbone

SMALL = {"name": "moco_v3", "proj_hidden_dim": 32, "proj_dim": 16, "pred_hidden_dim": 32, "momentum": 0.9}


def unit(v):
    return v.double() / math.sqrt(float(v.double() @ v.double()))


def loop_loss(q, k, t):
    total = 0.0
    for i in range(q.shape[0]):
        logits = [float(unit(q[i]) @ unit(k[j])) / t for j in range(k.shape[0])]
        total += -logits[i] + math.log(sum(math.exp(x) for x in logits))
    return 2 * t * total / q.shape[0]


def test_loss_matches_plain_loops():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    for t in (0.2, 1.0):
        assert float(moco_v3_loss(q, k, t)) == pytest.approx(loop_loss(q, k, t), rel=1e-5)
    kk = k.clone().requires_grad_(True)
    moco_v3_loss(q.requires_grad_(True), kk).backward()
    assert kk.grad is None


def small(**kw):
    torch.manual_seed(0)
    args = {k: v for k, v in SMALL.items() if k != "name"}
    return build_method("moco_v3", build_backbone("small_cnn", widths=[8, 8, 16, 16]), **{**args, **kw})


def views(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 3, 16, 16, generator=g) for _ in range(2)]


def test_forward_is_the_symmetrised_loss():
    assert "moco_v3" in METHODS
    method = small()
    x = views()
    loss, stats = method(x)
    with torch.no_grad():
        z = method.projector(method.backbone(torch.cat(x)))
        q = method.predictor(z).view(2, 8, -1)
        k = z.view(2, 8, -1)  # the key encoder starts as a copy of the query encoder
    expected = loop_loss(q[0], k[1], 0.2) + loop_loss(q[1], k[0], 0.2)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-4)
    assert set(stats) == {"loss", "pos_sim"}


def test_no_gradient_into_key_encoder_and_exact_ema():
    method = small()
    check_no_gradient_into(method, views(), frozen=["key_backbone", "key_projector"],
                           trained=["backbone", "projector", "predictor"])
    check_ema_step(method, [("key_backbone", "backbone"), ("key_projector", "projector")], momentum=0.9)
    method.momentum = 0.999  # read at step time
    check_ema_step(method, [("key_backbone", "backbone")], momentum=0.999)


def test_bad_input_is_one_line():
    for m in (1.0, -0.5):
        with pytest.raises(SslAugError, match=r"momentum(=.* is not allowed: use a number in \[0, 1\)|' must be >= 0 and < 1)"):
            small(momentum=m)
    with pytest.raises(SslAugError, match="unknown option.*queue_length.*allowed are proj_hidden_dim"):
        small(queue_length=4096)


def config(tmp_path, **train):
    return method_config(tmp_path, SMALL, **train)


def test_exact_resume(tmp_path):
    check_exact_resume(tmp_path, config)


def test_export_keeps_the_query_backbone(tmp_path):
    check_export(tmp_path, config, "backbone", dropped=("key_",), heads=("projector", "predictor"))


def test_shipped_recipes_build():
    from ssl_aug.config import load_recipe
    from ssl_aug.train.setup import build_model

    for name in ("moco_v3_embedded", "moco_v3_cifar10_cpu", "moco_v3_cifar10"):
        assert build_model(load_recipe(name)).name == "moco_v3"
