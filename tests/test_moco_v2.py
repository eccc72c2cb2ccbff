"""MoCo v2: InfoNCE against plain loops, queue per rank, exact EMA, no gradient into the key encoder,
exact resume, export of the query backbone, bad input."""

import math

import pytest
import torch

from method_checks import (check_ema_step, check_exact_resume, check_export, check_no_gradient_into,
                           method_config)
from ssl_aug.errors import SslAugError
from ssl_aug.losses.moco import moco_infonce
from ssl_aug.methods import METHODS, build_method
from ssl_aug.models import build_backbone

SMALL = {"name": "moco_v2", "proj_hidden_dim": 32, "proj_dim": 16, "queue_length": 64, "temperature": 0.2,
         "momentum": 0.9}


def unit(v):
    return v.double() / math.sqrt(float(v.double() @ v.double()))


def loop_infonce(q, k, queue, t):
    total = 0.0
    for n in range(q.shape[0]):
        pos = math.exp(float(unit(q[n]) @ unit(k[n])) / t)
        neg = sum(math.exp(float(unit(q[n]) @ unit(queue[j])) / t) for j in range(queue.shape[0]))
        total += -math.log(pos / (pos + neg))
    return total / q.shape[0]


def test_infonce_matches_plain_loops_and_ignores_scale():
    g = torch.Generator().manual_seed(0)
    q, k, queue = torch.randn(5, 6, generator=g), torch.randn(5, 6, generator=g), torch.randn(7, 6, generator=g)
    for t in (0.2, 1.0):
        assert float(moco_infonce(q, k, queue, t)) == pytest.approx(loop_infonce(q, k, queue, t), rel=1e-5)
    assert float(moco_infonce(3 * q, 2 * k, 5 * queue)) == pytest.approx(float(moco_infonce(q, k, queue)), rel=1e-5)
    assert moco_infonce(q, k, queue, reduction="none").shape == (5,)
    kk = k.clone().requires_grad_(True)
    moco_infonce(q.requires_grad_(True), kk, queue).backward()
    assert kk.grad is None and q.grad is not None


def small(**kw):
    torch.manual_seed(0)
    args = {k: v for k, v in SMALL.items() if k != "name"}
    return build_method("moco_v2", build_backbone("small_cnn", widths=[8, 8, 16, 16]), **{**args, **kw})


def views(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 3, 16, 16, generator=g) for _ in range(2)]


def test_forward_is_infonce_of_query_vs_key_and_queue_then_enqueues_keys():
    assert "moco_v2" in METHODS
    method = small()
    queue_before = method.queue.queue.clone()
    loss, stats = method(views())
    with torch.no_grad():
        q = method.projector(method.backbone(torch.cat(views()))).view(2, 8, -1)
    assert set(stats) == {"loss", "pos_sim", "neg_sim"}
    # the key encoder starts as a copy of the query encoder, so k equals q here
    assert float(loss) == pytest.approx(float(moco_infonce(q[0], q[1], queue_before, 0.2)), rel=1e-4)
    torch.testing.assert_close(method.queue.queue[:8], torch.nn.functional.normalize(q[1], dim=1), rtol=0, atol=1e-5)
    assert int(method.queue.pointer) == 8
    method.eval()
    method(views())
    assert int(method.queue.pointer) == 8  # evaluation forwards leave the queue alone


def test_symmetric_pushes_both_views():
    method = small(symmetric=True)
    method(views())
    assert int(method.queue.pointer) == 16


def test_no_gradient_into_key_encoder_and_exact_ema():
    method = small()
    check_no_gradient_into(method, views(), frozen=["key_backbone", "key_projector"], trained=["backbone", "projector"])
    check_ema_step(method, [("key_backbone", "backbone"), ("key_projector", "projector")], momentum=0.9)
    method.momentum = 0.5  # the momentum is read at step time (a schedule may set it)
    check_ema_step(method, [("key_backbone", "backbone")], momentum=0.5)


def test_bad_input_is_one_line():
    for m in (1.0, -0.1, 1.5):
        with pytest.raises(SslAugError, match=r"momentum(=.* is not allowed: use a number in \[0, 1\)|' must be >= 0 and < 1)"):
            small(momentum=m)
    with pytest.raises(SslAugError, match="queue_length=4 is not allowed with 8 images per rank"):
        small(queue_length=4)(views())
    with pytest.raises(SslAugError, match="unknown option.*lambd.*allowed are proj_hidden_dim"):
        small(lambd=1)
    with pytest.raises(SslAugError, match="MoCo uses exactly 2 views"):
        small()(views() + views())


def config(tmp_path, **train):
    return method_config(tmp_path, SMALL, **train)


def test_exact_resume(tmp_path):
    check_exact_resume(tmp_path, config)


def test_export_keeps_the_query_backbone(tmp_path):
    check_export(tmp_path, config, "backbone", dropped=("key_", "queue"), heads=("projector",))


def test_shipped_recipes_build():
    from ssl_aug.config import load_recipe
    from ssl_aug.train.setup import build_model

    for name in ("moco_v2_embedded", "moco_v2_cifar10_cpu", "moco_v2_cifar10"):
        assert build_model(load_recipe(name)).name == "moco_v2"
