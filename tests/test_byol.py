"""BYOL: loss against a hand computation, exact EMA, no gradient into the target, exact resume, export."""

import math

import pytest
import torch
import torch.nn as nn

from ssl_aug.errors import SslAugError
from ssl_aug.losses import byol_loss
from ssl_aug.methods import METHODS, build_method
from ssl_aug.methods.byol import BYOL, target_momentum
from ssl_aug.models import build_backbone
from trainer_fixtures import StopAfter, tiny_config, tiny_data


def loop_loss(q, z):
    """Plain loops: 2 / (V (V-1)) * sum_{a != b} mean_n (2 - 2 cos(q_a[n], z_b[n]))."""
    v, n, _ = q.shape
    total = 0.0
    for a in range(v):
        for b in range(v):
            if a == b:
                continue
            for i in range(n):
                qa, zb = q[a, i].double(), z[b, i].double()
                cos = float(qa @ zb) / (math.sqrt(float(qa @ qa)) * math.sqrt(float(zb @ zb)))
                total += (2.0 - 2.0 * cos) / n
    return 2.0 * total / (v * (v - 1))


@pytest.mark.parametrize("v", [2, 3])
def test_loss_matches_plain_loops(v):
    g = torch.Generator().manual_seed(v)
    q, z = torch.randn(v, 5, 7, generator=g), torch.randn(v, 5, 7, generator=g)
    assert float(byol_loss(q, z)) == pytest.approx(loop_loss(q, z), abs=1e-5)
    per_image = byol_loss(q, z, reduction="none")
    assert per_image.shape == (5,)
    assert float(per_image.mean()) == pytest.approx(float(byol_loss(q, z)), abs=1e-6)


def test_loss_is_the_papers_symmetrised_sum_and_bounded():
    q = torch.randn(2, 4, 6)
    same = byol_loss(q, q.flip(0))  # q_1 predicts z_2 = q_1 exactly: zero loss
    assert float(same) == pytest.approx(0.0, abs=1e-6)
    opposite = byol_loss(q, -q.flip(0))
    assert float(opposite) == pytest.approx(8.0, abs=1e-5)
    with pytest.raises(SslAugError, match=r"\(V, N, D\) with V >= 2"):
        byol_loss(torch.randn(1, 4, 6), torch.randn(1, 4, 6))


def test_momentum_schedule():
    assert target_momentum(0, 100) == pytest.approx(0.996)
    assert target_momentum(100, 100) == pytest.approx(1.0)
    assert target_momentum(50, 100) == pytest.approx(0.998)
    values = [target_momentum(k, 100) for k in range(101)]
    assert all(b >= a for a, b in zip(values, values[1:]))


def small_byol(**kw):
    torch.manual_seed(0)
    return build_method("byol", build_backbone("small_cnn", widths=[8, 8, 16, 16]), proj_hidden_dim=32,
                        proj_dim=16, pred_hidden_dim=32, **kw)


def views(n=6, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 3, size, size, generator=g) for _ in range(2)]


def test_target_gets_no_gradient_and_ema_is_exact():
    method = small_byol()
    assert "byol" in METHODS and isinstance(method, BYOL)
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.5)
    target_before = [p.detach().clone() for p in method._target_parameters()]
    loss, stats = method(views())
    loss.backward()
    assert all(p.grad is None for p in method._target_parameters())
    assert all(p.grad is not None for p in method.predictor.parameters())
    opt.step()
    online = [p.detach().clone() for p in method._online_parameters()]
    method.after_optimizer_step(step=1, total_steps=10)
    tau = 0.996  # first update: steps done before it = 0
    for before, now, on in zip(target_before, method._target_parameters(), online):
        torch.testing.assert_close(now, tau * before + (1 - tau) * on, rtol=0, atol=1e-7)
    assert float(method.momentum) == pytest.approx(tau)
    assert set(stats) == {"loss", "cos", "momentum"}


def test_target_starts_as_a_copy_and_is_not_in_the_optimizer():
    method = small_byol()
    for t, o in zip(method._target_parameters(), method._online_parameters()):
        assert torch.equal(t, o) and t.data_ptr() != o.data_ptr() and not t.requires_grad
    trainable = {id(p) for p in method.parameters() if p.requires_grad}
    assert not trainable & {id(p) for p in method._target_parameters()}


def test_per_image_loss_leaves_state_untouched():
    method = small_byol()
    before = {k: v.clone() for k, v in method.state_dict().items()}
    scores = method.per_image_loss(views())
    assert scores.shape == (6,) and torch.isfinite(scores).all()
    for k, v in method.state_dict().items():
        assert torch.equal(v, before[k]), k
    loss, _ = method(views())
    assert float(scores.mean()) == pytest.approx(float(loss.detach()), rel=1e-4)  # same batch, same BN statistics


def test_bad_options_are_one_line():
    with pytest.raises(SslAugError, match="base_momentum"):
        small_byol(base_momentum=1.5)


def byol_config(tmp_path, **train):
    cfg = tiny_config(tmp_path, **train)
    cfg.method = {"name": "byol", "proj_hidden_dim": 32, "proj_dim": 16, "pred_hidden_dim": 32}
    cfg.augment = {"size": 16, "scale": [0.3, 1.0], "blur": {"p": 0.5, "kernel_size": 3}}
    return cfg


def test_exact_resume(tmp_path):
    from ssl_aug.train import Trainer

    data = tiny_data()
    full = Trainer(byol_config(tmp_path / "full", epochs=2), train_data=data, progress=False)
    full.fit()
    first = StopAfter(byol_config(tmp_path / "part", epochs=2), train_data=data, progress=False)
    first.limit = 3  # dies after step 3; the last checkpoint is step 2
    with pytest.raises(KeyboardInterrupt):
        first.fit()
    second = Trainer(byol_config(tmp_path / "part", epochs=2), train_data=data, progress=False)
    second.fit(resume=True)
    assert second.step == full.step
    for (k, a), b in zip(full.method.state_dict().items(), second.method.state_dict().values()):
        assert torch.equal(a, b), k


def test_export_keeps_the_online_backbone_only(tmp_path):
    from ssl_aug.export import export_encoder, load_encoder, load_head
    from ssl_aug.train import Trainer

    trainer = Trainer(byol_config(tmp_path, epochs=1, max_steps=2), train_data=tiny_data(), progress=False)
    trainer.fit()
    out = export_encoder(tmp_path / "run", tmp_path / "export", with_head=True)
    encoder = load_encoder(out)
    online = trainer.method.backbone.state_dict()
    for k, v in encoder.backbone.state_dict().items():
        assert torch.equal(v, online[k]), k
    assert not torch.equal(next(iter(trainer.method.target_backbone.parameters())),
                           next(iter(trainer.method.backbone.parameters())))  # EMA made them differ
    head = load_head(out)
    keys = set(head["state_dict"] if "state_dict" in head else head)
    assert any(k.startswith("predictor.") for k in keys) and any(k.startswith("projector.") for k in keys)
    assert not any(k.startswith("target_") for k in keys)


def test_trains_on_random_backbone_with_nn_identity_head_dims():
    method = small_byol()
    method.train()
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    x = views(n=16)
    losses = []
    for step in range(1, 8):
        loss, _ = method(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        method.after_optimizer_step(step, 8)
        losses.append(float(loss))
    assert losses[-1] < losses[0]
    assert isinstance(method.target_projector, nn.Module)


def loop_imix_byol(q, z, lam, perm):
    """Plain loops: 2 * mean_i (2 - 2 cos(q_i, n(lam_i n(z_i) + (1 - lam_i) n(z_perm(i)))))."""
    def unit(v):
        return v / math.sqrt(float(v @ v))

    total = 0.0
    for i in range(q.shape[0]):
        t = unit(float(lam[i]) * unit(z[i].double()) + (1 - float(lam[i])) * unit(z[int(perm[i])].double()))
        total += 2.0 - 2.0 * float(unit(q[i].double()) @ t)
    return 2.0 * total / q.shape[0]


def test_imix_byol_loss_matches_plain_loops():
    from ssl_aug.losses import imix_byol_loss

    g = torch.Generator().manual_seed(4)
    q, z = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    lam, perm = torch.rand(6, generator=g), torch.randperm(6, generator=g)
    assert float(imix_byol_loss(q, z, lam, perm)) == pytest.approx(loop_imix_byol(q, z, lam, perm), abs=1e-5)
    unmixed = 2 * (2 - 2 * float(torch.nn.functional.cosine_similarity(q, z).mean()))  # lam = 1: plain BYOL term x 2
    assert float(imix_byol_loss(q, z, torch.ones(6), perm)) == pytest.approx(unmixed, abs=1e-5)


def test_byol_imix_is_seeded_by_step_and_trains(tmp_path):
    from ssl_aug.train import Trainer

    method = small_byol(mix={"mode": "mixup", "alpha": 1.0})
    x = views(n=8)
    a, stats = method(x, step=3)
    b, _ = method(x, step=3)
    c, _ = method(x, step=4)
    assert float(a) == float(b) and float(a) != float(c)  # a pure function of (seed, step)
    assert 0.0 < float(stats["mix_lam"]) <= 1.0
    with pytest.raises(SslAugError, match="mode="):
        small_byol(mix={"mode": "snapmix"})  # needs class labels: not for i-Mix
    cfg = byol_config(tmp_path, epochs=1)
    cfg.method["mix"] = {"mode": "cutmix", "alpha": 1.0}
    trainer = Trainer(cfg, train_data=tiny_data(), progress=False)
    trainer.fit()
    assert trainer.step == 3
