"""DINO: loss and centre against plain loops, sharpening, exact EMA, no gradient into the teacher, with and
without local crops, schedules through the recipe, exact resume, export of the student, bad input."""

import math

import pytest
import torch

from method_checks import (check_ema_step, check_exact_resume, check_export, check_no_gradient_into,
                           method_config)
from ssl_aug.errors import SslAugError
from ssl_aug.losses.dino import dino_loss, teacher_probabilities, updated_center
from ssl_aug.methods import METHODS, build_method
from ssl_aug.models import build_backbone

SMALL = {"name": "dino", "out_dim": 32, "hidden_dim": 32, "bottleneck_dim": 16, "momentum": 0.9}


def loop_loss(student, teacher, center, ts, tt):
    s_crops, n, k = student.shape
    t_crops = teacher.shape[0]
    total, pairs = 0.0, 0
    for t in range(t_crops):
        for s in range(s_crops):
            if s == t:
                continue
            pairs += 1
            for i in range(n):
                logits_t = [(float(teacher[t, i, j]) - float(center[j])) / tt for j in range(k)]
                zt = sum(math.exp(x) for x in logits_t)
                logits_s = [float(student[s, i, j]) / ts for j in range(k)]
                log_zs = math.log(sum(math.exp(x) for x in logits_s))
                total += sum(-(math.exp(logits_t[j]) / zt) * (logits_s[j] - log_zs) for j in range(k)) / n
    return total / pairs


@pytest.mark.parametrize("crops", [2, 4])
def test_loss_matches_plain_loops(crops):
    g = torch.Generator().manual_seed(crops)
    student, teacher = torch.randn(crops, 3, 6, generator=g), torch.randn(2, 3, 6, generator=g)
    center = 0.1 * torch.randn(6, generator=g)
    got = float(dino_loss(student, teacher, center, 0.1, 0.04))
    assert got == pytest.approx(loop_loss(student, teacher, center, 0.1, 0.04), rel=1e-5)


def test_centering_and_sharpening():
    g = torch.Generator().manual_seed(0)
    teacher, shift = torch.randn(2, 4, 8, generator=g), torch.randn(8, generator=g)
    # centring removes any constant offset of the teacher logits
    torch.testing.assert_close(teacher_probabilities(teacher + shift, shift, 0.07),
                               teacher_probabilities(teacher, torch.zeros(8), 0.07))
    def entropy(p):
        return float(-(p * p.clamp_min(1e-30).log()).sum(-1).mean())
    assert entropy(teacher_probabilities(teacher, torch.zeros(8), 0.04)) < entropy(
        teacher_probabilities(teacher, torch.zeros(8), 0.07))  # a lower temperature sharpens
    center = torch.randn(8, generator=g)
    expected = 0.9 * center + 0.1 * teacher.reshape(-1, 8).mean(0)
    torch.testing.assert_close(updated_center(center, teacher, 0.9), expected)


def small(**kw):
    torch.manual_seed(0)
    args = {k: v for k, v in SMALL.items() if k != "name"}
    return build_method("dino", build_backbone("small_cnn", widths=[8, 8, 16, 16]), **{**args, **kw})


def crops(n=6, local=0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 3, 16, 16, generator=g) for _ in range(2)] + \
        [torch.randn(n, 3, 8, 8, generator=g) for _ in range(local)]


@pytest.mark.parametrize("local", [0, 2])
def test_forward_with_and_without_local_crops(local):
    assert "dino" in METHODS
    method = small()
    x = crops(local=local)
    center = method.center.clone()
    loss, stats = method(x)
    assert set(stats) == {"loss", "teacher_entropy"} and torch.isfinite(loss)
    with torch.no_grad():
        teacher = method.teacher_head(method.teacher_backbone(torch.cat(x[:2]))).view(2, 6, -1)
    torch.testing.assert_close(method.center, updated_center(center, teacher, 0.9))
    if not local:  # the teacher starts as a copy of the student: the student's outputs are the teacher's
        student = teacher
        assert float(loss.detach()) == pytest.approx(float(dino_loss(student, teacher, center, 0.1, 0.04)), rel=1e-4)


def test_no_gradient_into_teacher_exact_ema_and_frozen_last_layer():
    method = small(freeze_last_layer_iters=1)
    check_no_gradient_into(method, crops(local=2), frozen=["teacher_backbone", "teacher_head"],
                           trained=["backbone", "head"])
    method.after_backward(step=0)
    assert method.head.last_layer.weight.grad is None
    check_ema_step(method, [("teacher_backbone", "backbone"), ("teacher_head", "head")], momentum=0.9)
    method.momentum, method.teacher_temperature = 0.999, 0.07  # read at step time (schedules set them)
    check_ema_step(method, [("teacher_head", "head")], momentum=0.999)


def test_bad_input_is_one_line():
    with pytest.raises(SslAugError, match=r"DINO got 1 crop\(s\): it needs at least 2"):
        small()(crops()[:1])
    with pytest.raises(SslAugError, match=r"momentum(=1.0 is not allowed: use a number in \[0, 1\)|' must be >= 0 and < 1, got 1.0)"):
        small(momentum=1.0)
    with pytest.raises(SslAugError, match="unknown option.*queue_length.*allowed are out_dim"):
        small(queue_length=10)


def test_swav_too_few_crops_is_one_line():
    swav = build_method("swav", build_backbone("small_cnn", widths=[8, 8, 16, 16]), proj_hidden_dim=16, proj_dim=8,
                        num_prototypes=4)
    with pytest.raises(SslAugError, match="at least 2 view batches"):
        swav(crops()[:1])


def config(tmp_path, **train):
    return method_config(tmp_path, SMALL, augment={"size": 16, "scale": [0.3, 1.0],
                                                   "multicrop": {"local_views": 2, "size": 8, "scale": [0.1, 0.3]}},
                         **train)


def scheduled_config(tmp_path, **train):
    cfg = config(tmp_path, **train)
    from ssl_aug.config import config_from_dict

    data = cfg.to_dict()
    data["method"]["teacher_temperature"] = {"schedule": "linear", "start": 0.04, "end": 0.07, "epochs": 1}
    data["method"]["momentum"] = {"schedule": "cosine", "start": 0.9, "end": 1.0}
    return config_from_dict(data)


def test_schedules_drive_teacher_temperature_and_momentum(tmp_path):
    from ssl_aug.train import Trainer
    from trainer_fixtures import tiny_data

    trainer = Trainer(scheduled_config(tmp_path, epochs=2), train_data=tiny_data(), progress=False)
    trainer.fit()
    assert trainer.method.teacher_temperature == pytest.approx(0.07)  # warm-up over epoch 1, then held
    assert 0.9 < trainer.method.momentum <= 1.0


def test_exact_resume_with_schedules(tmp_path):
    check_exact_resume(tmp_path, scheduled_config)


def test_export_keeps_the_student_backbone(tmp_path):
    check_export(tmp_path, config, "backbone", dropped=("teacher_", "center"), heads=("head",))


def test_shipped_recipes_build():
    from ssl_aug.config import load_recipe
    from ssl_aug.train.setup import build_model

    for name in ("dino_embedded", "dino_cifar10_cpu", "dino_cifar10"):
        assert build_model(load_recipe(name)).name == "dino"
