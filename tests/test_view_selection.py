"""Hard view sampling: per-image losses against plain loops, argmax selection, untouched model state,
determinism, exact resume with train.view_candidates > 1, bad values."""

import json
import math

import pytest
import torch

from ssl_aug.augment import MultiView, ViewSpec
from ssl_aug.checkpoint import latest_checkpoint, load_checkpoint
from ssl_aug.errors import SslAugError
from ssl_aug.losses import nt_xent_multiview, nt_xent_per_sample, sinkhorn, swav_loss
from ssl_aug.methods import build_method
from ssl_aug.models import build_backbone
from ssl_aug.train import Trainer
from ssl_aug.train.hard_views import hard_views, per_image_losses, select_per_image
from trainer_fixtures import StopAfter, tiny_data
from trainer_fixtures import tiny_config as shared_tiny_config


# ----------------------------------------------------------------- per-sample losses
def ref_nt_xent_per_image(z, tau):
    """Plain loops: image j's loss = mean over its V anchors of -mean_{positives} log softmax."""
    v, n, _ = z.shape
    rows = [z[a, j] / z[a, j].norm() for a in range(v) for j in range(n)]
    out = []
    for j in range(n):
        anchor_terms = []
        for a in range(v):
            i = a * n + j
            denom = sum(math.exp(float(rows[i] @ rows[m]) / tau) for m in range(v * n) if m != i)
            pos = [math.log(math.exp(float(rows[i] @ rows[b * n + j]) / tau) / denom) for b in range(v) if b != a]
            anchor_terms.append(-sum(pos) / len(pos))
        out.append(sum(anchor_terms) / v)
    return out


@pytest.mark.parametrize("v,n,tau", [(2, 5, 0.5), (3, 4, 0.2)])
def test_nt_xent_per_sample_matches_plain_loop_and_mean(v, n, tau):
    z = torch.randn(v, n, 6, generator=torch.Generator().manual_seed(v * n), dtype=torch.float64)
    got = nt_xent_per_sample(z, tau)
    assert got.shape == (n,)
    assert got.tolist() == pytest.approx(ref_nt_xent_per_image(z, tau), rel=1e-9)
    assert torch.allclose(got.mean(), nt_xent_multiview(z, tau), rtol=1e-12)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(nt_xent_per_sample(z[:, perm], tau), got[perm], rtol=1e-12)


def test_swav_per_sample_matches_loop_and_mean():
    g = torch.Generator().manual_seed(0)
    scores = [torch.randn(6, 5, generator=g, dtype=torch.float64) for _ in range(4)]
    got = swav_loss(scores, 0.1, 0.05, 3, (0, 1), sinkhorn_dtype=torch.float64, reduction="none")
    assert got.shape == (6,)
    assert torch.allclose(got.mean(), swav_loss(scores, 0.1, 0.05, 3, (0, 1), sinkhorn_dtype=torch.float64))
    codes = [sinkhorn(scores[a], 0.05, 3, dtype=torch.float64) for a in (0, 1)]
    for b in range(6):
        terms = []
        for ai, a in enumerate((0, 1)):
            for c in range(4):
                if c != a:
                    log_p = torch.log_softmax(scores[c][b] / 0.1, dim=0)
                    terms.append(-float((codes[ai][b] * log_p).sum()) / 3)
        assert float(got[b]) == pytest.approx(sum(terms) / 2, rel=1e-6)  # log-probs in float32
    with pytest.raises(SslAugError, match="reduction='sum'"):
        swav_loss(scores, reduction="sum")


# ----------------------------------------------------------------- selection
def test_select_picks_argmax_per_image_first_on_ties():
    k, n = 3, 5
    candidates = [[torch.full((n, 3, 4, 4), float(10 * i + v)) for v in range(2)] for i in range(k)]
    scores = torch.tensor([[0.1, 5.0, 0.0, 2.0, 1.0],
                           [0.3, 1.0, 0.0, 2.0, 7.0],
                           [0.2, 4.0, 0.0, 1.0, 7.0]])
    want = [1, 0, 0, 0, 1]  # argmax per column, the first candidate on ties
    out = select_per_image(candidates, scores)
    assert len(out) == 2
    for v in range(2):
        assert out[v].shape == (n, 3, 4, 4)
        assert out[v][:, 0, 0, 0].tolist() == [10.0 * i + v for i in want]
    cl = [[t.contiguous(memory_format=torch.channels_last) for t in c] for c in candidates]
    assert select_per_image(cl, scores)[0].is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(SslAugError, match=r"\(K, N\)"):
        select_per_image(candidates, scores[:2])


def tiny_method(name="simclr"):
    torch.manual_seed(0)
    backbone = build_backbone("small_cnn", widths=[8, 16])
    if name == "swav":
        return build_method("swav", backbone, proj_hidden_dim=16, proj_dim=8, num_prototypes=6,
                            queue_length=32, queue_start_epoch=0)
    return build_method("simclr", backbone, proj_hidden_dim=16, proj_dim=8, temperature=0.5)


def random_images(n=16, size=12, seed=0):
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", ["simclr", "swav"])
def test_scoring_leaves_model_state_unchanged(name):
    method = tiny_method(name).train()
    views = MultiView(ViewSpec(size=12), 2)(random_images(), torch.Generator().manual_seed(0))
    if name == "swav":  # unnormalised prototypes, as after an optimiser step: scoring must not normalise them
        method.prototypes.weight.data.mul_(1.5)
    before = {k: v.clone() for k, v in method.state_dict().items()}
    scores = per_image_losses(method, views)
    assert scores.shape == (16,) and scores.dtype == torch.float32 and torch.isfinite(scores).all()
    after = method.state_dict()
    assert before.keys() == after.keys()
    for key in before:  # parameters AND buffers (BN running stats, num_batches_tracked, SwAV queue)
        assert torch.equal(before[key], after[key]), key
    assert method.training
    # the same views through the method's own training forward give the same mean loss (BN batch stats)
    if name == "simclr":
        loss, _ = method(views)
        assert torch.allclose(scores.mean(), loss.detach(), rtol=1e-5)
    else:
        method.queue_length = 0  # compare without the queue
        loss, _ = method(views, epoch=0)
        assert torch.allclose(scores.mean(), loss.detach(), rtol=1e-5)


def test_hard_views_shapes_determinism_and_hardness():
    method = tiny_method().train()
    mv = MultiView(ViewSpec(size=12), 2)
    images = random_images()
    plain = mv(images, torch.Generator().manual_seed(5))

    def draw(seed, k):
        g = torch.Generator().manual_seed(seed)
        return hard_views(method, lambda: mv(images, generator=g), k), g

    hard, g = draw(5, 4)
    assert [(t.shape, t.dtype) for t in hard] == [(t.shape, t.dtype) for t in plain]
    again, g2 = draw(5, 4)
    assert all(torch.equal(a, b) for a, b in zip(hard, again))
    assert torch.equal(g.get_state(), g2.get_state())
    other, _ = draw(6, 4)
    assert not torch.equal(hard[0], other[0])
    one, _ = draw(5, 1)  # K = 1 is exactly the plain random views
    assert all(torch.equal(a, b) for a, b in zip(one, plain))
    # the selected views are at least as hard per image as the first candidate (same BN batch aside:
    # score each candidate batch on its own, then the chosen per-image score is the column max)
    g = torch.Generator().manual_seed(5)
    cands = [mv(images, generator=g) for _ in range(4)]
    scores = torch.stack([per_image_losses(method, c) for c in cands])
    chosen = select_per_image(cands, scores)
    assert all(torch.equal(a, b) for a, b in zip(chosen, hard))
    assert scores.max(0).values.mean() > scores[0].mean()
    with pytest.raises(SslAugError, match="view_candidates=0"):
        hard_views(method, lambda: plain, 0)


def test_unknown_method_is_a_clear_error():
    class Other(torch.nn.Module):
        pass

    with pytest.raises(SslAugError, match="Other; allowed: SimCLR, SwAV"):
        per_image_losses(Other(), [torch.zeros(2, 3, 4, 4)] * 2)


# ----------------------------------------------------------------- trainer integration
def tiny_config(tmp_path, method="simclr", **train):
    return shared_tiny_config(tmp_path, method, widths=[8, 16], **{"epochs": 2, **train})


def test_trainer_make_views_uses_candidates(tmp_path):
    data = tiny_data()
    plain = Trainer(tiny_config(tmp_path / "a"), progress=False, train_data=data)
    hard = Trainer(tiny_config(tmp_path / "b", view_candidates=3), progress=False, train_data=data)
    images = data.images[:32]
    a, b = plain.make_views(images), hard.make_views(images)
    assert [(t.shape, t.dtype) for t in a] == [(t.shape, t.dtype) for t in b]
    assert not torch.equal(a[0], b[0])
    # three candidate draws consumed from the view generator, replayable
    g = torch.Generator().manual_seed(3 * 1000)
    cands = [plain.views(images, generator=g) for _ in range(3)]
    assert torch.equal(g.get_state(), hard.view_generator.get_state())
    scores = torch.stack([per_image_losses(hard.method, c) for c in cands])
    assert all(torch.equal(x, y) for x, y in zip(select_per_image(cands, scores), b))


@pytest.mark.parametrize("method", ["simclr", "swav"])
def test_resume_is_bit_identical_with_candidates(tmp_path, method):
    data = tiny_data()
    full = Trainer(tiny_config(tmp_path / "a", method, view_candidates=3), progress=False, train_data=data)
    full.fit()
    assert full.step == 6
    interrupted = StopAfter(tiny_config(tmp_path / "b", method, view_candidates=3), progress=False, train_data=data)
    interrupted.limit = 3
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit()
    assert load_checkpoint(latest_checkpoint(tmp_path / "b" / "run"))["step"] == 2
    resumed = Trainer(tiny_config(tmp_path / "b", method, view_candidates=3), progress=False, train_data=data)
    resumed.fit(resume=True)
    a, b = full.method.state_dict(), resumed.method.state_dict()
    for key in a:
        assert torch.equal(a[key], b[key]), key

    def losses(run):
        return [(r["type"], r["step"], r.get("loss"))
                for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]
    assert losses(tmp_path / "a" / "run") == losses(tmp_path / "b" / "run")
    # and hard sampling trained differently from random views
    plain = Trainer(tiny_config(tmp_path / "c", method), progress=False, train_data=data)
    plain.fit()
    assert not torch.equal(next(plain.method.parameters()), next(full.method.parameters()))


@pytest.mark.parametrize("value", [0, -2])
def test_bad_view_candidates_is_one_line_error(tmp_path, value):
    with pytest.raises(SslAugError) as err:
        tiny_config(tmp_path, view_candidates=value)
    assert "train.view_candidates" in str(err.value) and ">= 1" in str(err.value) and str(value) in str(err.value)
    assert "\n" not in str(err.value)
    with pytest.raises(SslAugError, match="train.view_candidates' must be int"):
        tiny_config(tmp_path, view_candidates=2.5)
