"""Checks every method with a target / teacher / key network must pass: exact resume after a kill,
export keeps the online backbone only, no gradient into the EMA network, EMA update exact."""

import pytest
import torch

from trainer_fixtures import StopAfter, tiny_config, tiny_data


def method_config(tmp_path, method: dict, augment: dict | None = None, **train):
    """tiny_config with `method` as the [method] table (and `augment` replacing [augment] if given)."""
    cfg = tiny_config(tmp_path, **train)
    cfg.method = dict(method)
    if augment is not None:
        cfg.augment = dict(augment)
    return cfg


def check_exact_resume(tmp_path, make_cfg) -> None:
    """A run killed after step 3 (last checkpoint: step 2) and resumed ends bit-identical to an uninterrupted one."""
    from ssl_aug.train import Trainer

    data = tiny_data()
    full = Trainer(make_cfg(tmp_path / "full", epochs=2), train_data=data, progress=False)
    full.fit()
    first = StopAfter(make_cfg(tmp_path / "part", epochs=2), train_data=data, progress=False)
    first.limit = 3
    with pytest.raises(KeyboardInterrupt):
        first.fit()
    second = Trainer(make_cfg(tmp_path / "part", epochs=2), train_data=data, progress=False)
    second.fit(resume=True)
    assert second.step == full.step
    a, b = full.method.state_dict(), second.method.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def check_export(tmp_path, make_cfg, online: str, dropped: tuple[str, ...], heads: tuple[str, ...]) -> None:
    """Export writes the `online` module as the encoder, `heads` in head.pt, and none of `dropped`."""
    from ssl_aug.export import export_encoder, load_encoder, load_head
    from ssl_aug.train import Trainer

    trainer = Trainer(make_cfg(tmp_path, epochs=1, max_steps=2), train_data=tiny_data(), progress=False)
    trainer.fit()
    out = export_encoder(tmp_path / "run", tmp_path / "export", with_head=True)
    encoder = load_encoder(out)
    wanted = getattr(trainer.method, online).state_dict()
    for k, v in encoder.backbone.state_dict().items():
        assert torch.equal(v, wanted[k]), k
    head = load_head(out)
    keys = set(head["state_dict"] if "state_dict" in head else head)
    for h in heads:
        assert any(k.startswith(h + ".") for k in keys), h
    for d in dropped:
        assert not any(k.startswith(d) for k in keys), d


def check_no_gradient_into(method, views, frozen: list[str], trained: list[str]) -> None:
    """After one backward, the `frozen` submodules have no gradients and no trainable parameters."""
    loss, stats = method(views)
    loss.backward()
    for name in frozen:
        for p in getattr(method, name).parameters():
            assert p.grad is None and not p.requires_grad, name
    for name in trained:
        assert any(p.grad is not None for p in getattr(method, name).parameters()), name
    trainable = {id(p) for p in method.parameters() if p.requires_grad}
    for name in frozen:
        assert not trainable & {id(p) for p in getattr(method, name).parameters()}, name
    return loss, stats


def check_ema_step(method, pairs: list[tuple[str, str]], momentum: float, step: int = 1, total: int = 10) -> None:
    """after_optimizer_step moves each (target, online) pair by exactly t <- m t + (1 - m) o."""
    with torch.no_grad():
        for _, online in pairs:
            for p in getattr(method, online).parameters():
                p.add_(0.01 * torch.randn_like(p))
    before = {t: [p.clone() for p in getattr(method, t).parameters()] for t, _ in pairs}
    method.after_optimizer_step(step, total)
    for t, o in pairs:
        for b, now, on in zip(before[t], getattr(method, t).parameters(), getattr(method, o).parameters()):
            torch.testing.assert_close(now, momentum * b + (1 - momentum) * on, rtol=0, atol=1e-6)
