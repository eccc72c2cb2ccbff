"""i-Mix: the mixed-label contrastive loss against a plain-loop reference, and SimCLR's method.mix option."""

import math

import pytest
import torch

from ssl_aug.errors import SslAugError
from ssl_aug.losses import imix_nt_xent, nt_xent


def loop_imix(z_mixed, z_other, lam, perm, t):
    """Plain-Python reference: per anchor, cross-entropy of the mixed target over the other view."""
    n = len(z_mixed)
    total = 0.0
    for i in range(n):
        a = [float(v) for v in z_mixed[i]]
        na = math.sqrt(sum(v * v for v in a))
        s = []
        for j in range(n):
            k = [float(v) for v in z_other[j]]
            nk = math.sqrt(sum(v * v for v in k))
            s.append(sum(x * y for x, y in zip(a, k)) / (na * nk) / t)
        m = max(s)
        log_z = m + math.log(sum(math.exp(v - m) for v in s))
        lp = [v - log_z for v in s]
        total += -(float(lam[i]) * lp[i] + (1 - float(lam[i])) * lp[int(perm[i])])
    return total / n


def test_imix_matches_plain_loop():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(7, 5, generator=g), torch.randn(7, 5, generator=g)
    lam, perm = torch.rand(7, generator=g), torch.randperm(7, generator=g)
    for t in (0.1, 0.5):
        got = imix_nt_xent(z1, z2, lam, perm, t).item()
        assert abs(got - loop_imix(z1, z2, lam, perm, t)) < 1e-5


def test_imix_without_mixing_is_the_n_pair_loss_and_mixing_interpolates():
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    ident = torch.arange(6)
    n_pair = torch.nn.functional.cross_entropy(
        torch.nn.functional.normalize(z1, dim=1) @ torch.nn.functional.normalize(z2, dim=1).t() / 0.5, ident)
    assert torch.allclose(imix_nt_xent(z1, z2, torch.ones(6), ident, 0.5), n_pair, atol=1e-6)
    perm = torch.tensor([1, 0, 3, 2, 5, 4])
    l0 = imix_nt_xent(z1, z2, torch.zeros(6), perm, 0.5)
    l1 = imix_nt_xent(z1, z2, torch.ones(6), perm, 0.5)
    lh = imix_nt_xent(z1, z2, torch.full((6,), 0.25), perm, 0.5)
    assert torch.allclose(lh, 0.25 * l1 + 0.75 * l0, atol=1e-6)  # linear in lambda
    # permuting the batch (anchors, keys and partner indices together) leaves the loss unchanged
    q = torch.randperm(6, generator=g)
    inv = torch.argsort(q)
    lam = torch.rand(6, generator=g)
    a = imix_nt_xent(z1, z2, lam, perm, 0.5)
    b = imix_nt_xent(z1[q], z2[q], lam[q], inv[perm[q]], 0.5)
    assert torch.allclose(a, b, atol=1e-6)


def test_imix_gradient_and_bad_inputs():
    z1 = torch.randn(4, 3, requires_grad=True)
    imix_nt_xent(z1, torch.randn(4, 3), torch.rand(4), torch.randperm(4)).backward()
    assert z1.grad is not None and torch.isfinite(z1.grad).all()
    with pytest.raises(SslAugError, match="temperature"):
        imix_nt_xent(torch.randn(4, 3), torch.randn(4, 3), torch.rand(4), torch.randperm(4), 0.0)
    with pytest.raises(SslAugError, match=r"\(N, D\)"):
        imix_nt_xent(torch.randn(4, 3), torch.randn(5, 3), torch.rand(4), torch.randperm(4))
    with pytest.raises(SslAugError, match="lam"):
        imix_nt_xent(torch.randn(4, 3), torch.randn(4, 3), torch.rand(3), torch.randperm(4))
    # the N-pair loss is not NT-Xent (no within-view negatives): guard against silently aliasing one to the other
    z2 = torch.randn(4, 3)
    assert not torch.allclose(imix_nt_xent(z1.detach(), z2, torch.ones(4), torch.arange(4)), nt_xent(z1.detach(), z2))


# ---------------------------------------------------------------- SimCLR with method.mix
from ssl_aug.methods import build_method  # noqa: E402
from ssl_aug.models import build_backbone  # noqa: E402


def simclr(mix, seed=0):
    torch.manual_seed(seed)
    return build_method("simclr", build_backbone("small_cnn", widths=[8, 16]), proj_hidden_dim=16, proj_dim=8,
                        temperature=0.5, mix=mix)


def two_views(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 3, 16, 16, generator=g) for _ in range(2)]


@pytest.mark.parametrize("mode", ["mixup", "cutmix", "gridmix", "saliency_cutmix"])
def test_simclr_mix_is_the_imix_loss_of_the_mixed_view(mode):
    views = two_views()
    model = simclr({"mode": mode, "alpha": 1.0, "p": 1.0}).train()
    loss, stats = model(views, step=5)
    # recompute by hand: same generator -> same gate and mix, then the reference loss on the embeddings
    from ssl_aug.augment.mix import mix_batch

    g = model.mix_generator(5)
    assert (torch.rand(12, generator=g) < 1.0).all()
    m = mix_batch(mode, views[0], alpha=1.0, generator=g)
    with torch.no_grad():
        z = model.projector(model.backbone(torch.cat([m.images, views[1]]))).view(2, 12, -1)
    assert abs(loss.item() - loop_imix(z[0], z[1], m.lam, m.perm, 0.5)) < 1e-4
    assert 0 < stats["mix_lam"] < 1
    loss.backward()  # differentiable through the mixed view


def test_simclr_mix_is_seeded_by_step_and_off_in_eval_and_at_p0():
    views = two_views()
    model, plain = simclr({"mode": "mixup", "alpha": 1.0}), simclr(None)
    # the option does not change the initial weights, and in eval mode the loss is plain NT-Xent
    for (k, v), (k2, v2) in zip(model.state_dict().items(), plain.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    model.eval(), plain.eval()
    assert torch.allclose(model(views)[0], plain(views)[0])
    model.train()
    a, b, c = (model(views, step=s)[0].item() for s in (3, 3, 4))
    assert abs(a - b) < 1e-6 and abs(a - c) > 1e-4  # a function of (seed, step): replayable on resume
    assert simclr({"mode": "mixup"}, seed=0)._mix_seed == model._mix_seed
    # p = 0: nothing is mixed, the loss is the unmixed N-pair loss of view 0 against view 1
    off = simclr({"mode": "cutmix", "p": 0.0}).train()
    loss, stats = off(views, step=1)
    with torch.no_grad():
        z = off.projector(off.backbone(torch.cat(views))).view(2, 12, -1)
    assert abs(loss.item() - loop_imix(z[0], z[1], torch.ones(12), torch.arange(12), 0.5)) < 1e-4
    assert stats["mix_lam"] == 1


def test_simclr_mix_bad_options_are_one_line_errors():
    for mix, word in (({"mode": "mixup", "alpha": 0}, "alpha"), ({"mode": "mixup", "p": 2}, "p=2"),
                      ({"mode": "cutout"}, "mode='cutout'"), ({"mode": "snapmix"}, "snapmix"),
                      ({"alpha": 1.0}, "mode=None")):
        with pytest.raises(SslAugError, match=word) as info:
            simclr(mix)
        assert "\n" not in str(info.value)
    model = simclr({"mode": "mixup"}).train()
    with pytest.raises(SslAugError, match="2 views"):
        model(two_views() + two_views(seed=1)[:1])


def test_imix_training_resumes_bit_identically(tmp_path):
    from trainer_fixtures import StopAfter, tiny_config, tiny_data

    from ssl_aug.config import apply_overrides, config_from_dict
    from ssl_aug.train import Trainer

    def cfg(where):
        data = apply_overrides(tiny_config(where).to_dict(), {"method.mix": {"mode": "cutmix", "alpha": 1.0},
                                                               "train.epochs": 2})
        return config_from_dict(data)

    data = tiny_data()
    full = Trainer(cfg(tmp_path / "a"), progress=False, train_data=data)
    full.fit()
    stopped = StopAfter(cfg(tmp_path / "b"), progress=False, train_data=data)
    stopped.limit = 3
    with pytest.raises(KeyboardInterrupt):
        stopped.fit()
    resumed = Trainer(cfg(tmp_path / "b"), progress=False, train_data=data)
    resumed.fit(resume=True)
    assert resumed.step == full.step == 6
    for key, value in full.method.state_dict().items():
        assert torch.equal(value, resumed.method.state_dict()[key]), key
