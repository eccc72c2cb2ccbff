"""SimCLR and SwAV modules: wiring, statistics, prototype freezing/renormalisation, queue, resume."""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ssl_aug.errors import SslAugError
from ssl_aug.losses import nt_xent_multiview, swav_loss
from ssl_aug.methods import METHODS, SimCLR, SwAV, build_method, method_options
from ssl_aug.methods.base import encode_views
from ssl_aug.methods.simclr import similarity_stats
from ssl_aug.models import build_backbone


class Tiny(nn.Module):
    """Conv-BN-ReLU-pool backbone (N, 3, H, W) -> (N, 8) that records its batch sizes."""

    feature_dim = 8

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.calls = []

    def forward(self, x):
        self.calls.append(tuple(x.shape))
        return self.net(x)


def views(n=4, sizes=(16, 16), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 3, s, s, generator=g) for s in sizes]


def swav(**kw):
    torch.manual_seed(0)
    opts = dict(proj_hidden_dim=16, proj_dim=8, num_prototypes=12, freeze_prototypes_iters=0)
    opts.update(kw)
    return SwAV(Tiny(), **opts)


def test_registry_and_option_errors():
    assert set(METHODS) == {"simclr", "swav", "byol", "simsiam", "vicreg", "barlow_twins", "moco_v2", "moco_v3",
                            "nnclr", "dino"}
    assert "temperature" in method_options("simclr") and "queue_length" in method_options("swav")
    with pytest.raises(SslAugError, match=r"unknown method 'mocov2'; did you mean 'moco_v2'\?.*simclr, simsiam, swav"):
        build_method("mocov2", Tiny())
    with pytest.raises(SslAugError, match=r"option\(s\) tau for method 'simclr': allowed .*temperature"):
        build_method("simclr", Tiny(), tau=0.5)
    with pytest.raises(SslAugError, match=r"method.temperature. must be > 0, got 0"):
        build_method("simclr", Tiny(), temperature=0)
    with pytest.raises(SslAugError, match=r"method.epsilon. must be > 0, got -1"):
        build_method("swav", Tiny(), epsilon=-1)
    with pytest.raises(SslAugError, match="crops_for_assign"):
        build_method("swav", Tiny(), crops_for_assign=[0, 0])
    with pytest.raises(SslAugError, match=r"crops_for_assign=\(0, 3\) is not allowed with 2 crops"):
        swav(crops_for_assign=(0, 3))(views())
    with pytest.raises(SslAugError, match="at least 2 view"):
        build_method("simclr", Tiny())([torch.randn(2, 3, 8, 8)])


def test_encode_views_one_forward_per_resolution_in_view_order():
    bb = Tiny().eval()
    vs = views(n=3, sizes=(16, 16, 8, 8, 8, 16))
    feats = encode_views(bb, vs)
    assert bb.calls == [(9, 3, 16, 16), (9, 3, 8, 8)]
    with torch.no_grad():
        want = torch.cat([bb(v) for v in vs])
    assert torch.allclose(feats, want, atol=1e-6)


def test_similarity_stats_match_brute_force():
    z = torch.randn(3, 5, 4)
    stats = similarity_stats(z)
    u = F.normalize(z, dim=-1).reshape(15, 4)
    sim = u @ u.t()
    image = torch.arange(5).repeat(3)
    same = image[:, None] == image[None, :]
    eye = torch.eye(15, dtype=torch.bool)
    assert torch.allclose(stats["pos_sim"], sim[same & ~eye].mean(), atol=1e-6)
    assert torch.allclose(stats["neg_sim"], sim[~same].mean(), atol=1e-6)


@pytest.mark.parametrize("sizes", [(16, 16), (16, 16, 8)])
def test_simclr_forward_backward(sizes):
    torch.manual_seed(0)
    method = build_method("simclr", Tiny(), proj_hidden_dim=16, proj_dim=6, temperature=0.2)
    vs = views(sizes=sizes)
    loss, stats = method(vs)
    assert set(stats) == {"loss", "pos_sim", "neg_sim"}
    assert all(t.dim() == 0 and not t.requires_grad for t in stats.values())
    # The module's loss is the multi-view NT-Xent of its own projections (same batch-norm batch).
    feats = method.backbone(torch.cat(vs)) if len(set(sizes)) == 1 else encode_views(method.backbone, vs)
    z = method.projector(feats)
    assert torch.allclose(loss, nt_xent_multiview(z.view(len(vs), 4, -1), 0.2), atol=1e-6)
    loss.backward()
    grads = [p.grad for p in method.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert {k.split(".")[0] for k in method.state_dict()} == {"backbone", "projector"}


def test_simclr_learns_and_reports_collapse():
    torch.manual_seed(0)
    method = build_method("simclr", Tiny(), proj_hidden_dim=32, proj_dim=16)
    opt = torch.optim.SGD(method.parameters(), lr=0.1)
    x = torch.randn(16, 3, 8, 8)
    vs = [x + 0.1 * torch.randn_like(x), x + 0.1 * torch.randn_like(x)]
    losses = []
    for step in range(5):
        loss, _ = method(vs, step=step)
        opt.zero_grad()
        loss.backward()
        method.after_backward(step)
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert SimCLR.health_messages({"neg_sim": torch.tensor(0.99)})
    assert SimCLR.health_messages({"neg_sim": torch.tensor(0.1)}) == []


@pytest.mark.parametrize("name", ["simclr", "swav"])
def test_methods_on_cifar_resnet18(name):
    torch.manual_seed(0)
    kw = {"num_prototypes": 10} if name == "swav" else {}
    method = build_method(name, build_backbone("cifar_resnet18"), proj_hidden_dim=32, proj_dim=16, **kw)
    loss, stats = method(views(n=4, sizes=(8, 8) if name == "simclr" else (8, 8, 4, 4)))
    loss.backward()
    assert torch.isfinite(loss) and method.backbone.conv1.weight.grad.abs().sum() > 0


def test_simclr_bf16_autocast():
    method = build_method("simclr", Tiny(), proj_hidden_dim=16, proj_dim=6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = method(views())
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()


def test_swav_forward_backward_multicrop_and_stats():
    method = swav()
    vs = views(sizes=(16, 16, 8, 8, 8))
    loss, stats = method(vs)
    assert method.backbone.calls == [(8, 3, 16, 16), (12, 3, 8, 8)]
    assert set(stats) == {"loss", "code_entropy", "code_max", "proto_usage", "collapse", "queue_used"}
    assert all(t.dim() == 0 and not t.requires_grad for t in stats.values())
    assert 0 < stats["code_entropy"] <= math.log(12) + 1e-6
    assert 1 / 12 - 1e-6 <= stats["code_max"] <= 1 and 0 < stats["proto_usage"] <= 1
    assert stats["collapse"] == 0 and stats["queue_used"] == 0
    # Same numbers from the pure loss on the module's own scores.
    z = F.normalize(method.projector(encode_views(method.backbone, vs)), dim=1)
    assert torch.allclose(loss, swav_loss(method.prototypes(z).chunk(5), 0.1, 0.05, 3, (0, 1)), atol=1e-6)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in method.parameters())
    assert {k.split(".")[0] for k in method.state_dict()} == {"backbone", "projector", "prototypes"}


def test_swav_collapse_flag_at_log_k():
    method = swav(freeze_prototypes_iters=5).eval()
    with torch.no_grad():
        method.prototypes.weight.zero_()  # scores all 0: uniform predictions
        _, early = method(views(), step=method.prototypes.freeze_iters - 1)
        loss, stats = method(views(), step=method.prototypes.freeze_iters)
    assert loss.item() == pytest.approx(math.log(12), rel=1e-6)
    assert early["collapse"] == 0 and method.health_messages(early) == []  # prototypes still frozen: no warning
    assert stats["collapse"] == 1
    assert "ln(K)" in method.health_messages(stats)[0]
    _, ok = swav()(views())
    assert method.health_messages(ok) == []


def test_swav_renormalises_prototypes_in_training_only():
    method = swav()
    with torch.no_grad():
        method.prototypes.weight.mul_(3.0)
    method.eval()
    method(views())
    assert torch.allclose(method.prototypes.weight.norm(dim=1), torch.full((12,), 3.0), atol=1e-5)
    method.train()
    method(views())
    assert torch.allclose(method.prototypes.weight.norm(dim=1), torch.ones(12), atol=1e-6)


def test_swav_prototypes_frozen_for_first_iterations():
    method = swav(freeze_prototypes_iters=2)
    opt = torch.optim.SGD(method.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-2)
    protos, heads = [], []
    for step in range(4):
        loss, _ = method(views(seed=step), step=step)
        protos.append(method.prototypes.weight.detach().clone())  # after the in-forward renormalisation
        heads.append(method.projector[0].weight.detach().clone())
        opt.zero_grad()
        loss.backward()
        method.after_backward(step)
        assert (method.prototypes.weight.grad is None) == (step < 2)
        opt.step()
    # Steps 0 and 1 leave the prototypes alone (weight decay and momentum included); step 2 moves them.
    assert torch.allclose(protos[0], protos[1], atol=1e-6) and torch.allclose(protos[1], protos[2], atol=1e-6)
    assert not torch.allclose(protos[2], protos[3], atol=1e-4)
    assert not torch.allclose(heads[0], heads[1])


def test_swav_queue_fills_from_start_epoch_and_is_used_once_full():
    method = swav(queue_length=8, queue_start_epoch=1)
    assert method.queue.shape == (2, 8, 8)
    _, stats = method(views(seed=0), epoch=0)
    assert method.queue.abs().sum() == 0 and stats["queue_used"] == 0
    zs = []
    for i, used in enumerate([0, 0, 1]):
        vs = views(seed=i + 1)
        with torch.no_grad():  # train-mode BN uses batch statistics: the module sees the same z
            zs.append(F.normalize(method.projector(encode_views(method.backbone, vs)), dim=1).view(2, 4, -1))
        queue_before = method.queue.clone()
        loss, stats = method(vs, epoch=1)
        assert stats["queue_used"] == used
        if used:
            scores = method.prototypes(zs[-1].reshape(8, -1)).chunk(2)
            qs = [queue_before[j] @ method.prototypes.weight.t() for j in range(2)]
            assert torch.allclose(loss, swav_loss(scores, 0.1, 0.05, 3, (0, 1), queue_scores=qs), atol=1e-6)
            assert not torch.allclose(loss, swav_loss(scores, 0.1, 0.05, 3, (0, 1)), atol=1e-4)
    # Newest first: the last batch's assign-crop embeddings, then the one before.
    assert torch.allclose(method.queue, torch.cat([zs[2], zs[1]], dim=1), atol=1e-6)
    assert method.queue_count.item() == 8
    with pytest.raises(SslAugError, match="queue_length=8 is not allowed with 16 images"):
        method(views(n=16), epoch=1)


def test_swav_state_dict_resume_is_exact():
    method = swav(queue_length=8, queue_start_epoch=0)
    method(views(seed=0))
    state = {k: v.clone() for k, v in method.state_dict().items()}
    assert "queue" in state and state["queue_count"].item() == 4
    a, _ = method(views(seed=1))
    b, _ = method(views(seed=2))
    resumed = swav(queue_length=8, queue_start_epoch=0)
    resumed.load_state_dict(state)
    a2, _ = resumed(views(seed=1))
    b2, stats = resumed(views(seed=2))
    assert stats["queue_used"] == 1
    assert torch.equal(a, a2) and torch.equal(b, b2)
