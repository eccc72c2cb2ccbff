"""The Python API speaks the recipes' language: load_dataset(..., subset=N) picks the images data.subset
picks, ImageDataset.subset takes a count or indices; loss modules equal their functions; named heads."""

from __future__ import annotations

import pytest
import torch

from ssl_aug.data import load_dataset
from ssl_aug.errors import SslAugError
from ssl_aug.losses import (BYOLLoss, IMixNTXentLoss, NTXentLoss, SinkhornKnopp, SwaVLoss, byol_loss, imix_nt_xent,
                            nt_xent, nt_xent_multiview, sinkhorn, swav_loss)
from ssl_aug.models import (BYOLPredictionHead, BYOLProjectionHead, Prototypes, SimCLRProjectionHead,
                            SwaVProjectionHead)

OPTS = {"n_per_class": 30}


def test_load_dataset_subset_matches_the_recipe_key(tmp_path, monkeypatch):
    from ssl_aug.config import load_recipe
    from ssl_aug.train.setup import load_training_data

    monkeypatch.setenv("SSL_AUG_DATA", str(tmp_path))
    full = load_dataset("embedded", "train", **OPTS)
    small = load_dataset("embedded", "train", subset=100, **OPTS)
    assert len(full) == 300 and len(small) == 100
    assert small.class_counts().tolist() == [10] * 10  # class-balanced
    cfg = load_recipe("quickstart", ["data.subset=100", "data.options={n_per_class=30}"])
    trained_on = load_training_data(cfg, cfg.data.split)
    assert torch.equal(trained_on.images, small.images) and torch.equal(trained_on.labels, small.labels)
    assert torch.equal(full.subset(100).images, small.images)  # the same as ImageDataset.subset(count)
    assert load_dataset("embedded", "train", subset=1000, **OPTS) is not None
    assert len(load_dataset("embedded", "train", subset=1000, **OPTS)) == 300  # more than there is: all
    with pytest.raises(SslAugError, match="subset=-1"):
        load_dataset("embedded", "train", subset=-1, **OPTS)


def test_image_dataset_subset_count_indices_and_seed(tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_AUG_DATA", str(tmp_path))
    data = load_dataset("embedded", "test", **OPTS)
    idx = torch.tensor([3, 1, 4])
    picked = data.subset(idx)
    assert torch.equal(picked.images, data.images[idx]) and picked.labels.tolist() == data.labels[idx].tolist()
    a, b, c = data.subset(50), data.subset(50), data.subset(50, seed=1)
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    assert a.class_counts().tolist() == [5] * 10 and c.class_counts().tolist() == [5] * 10
    with pytest.raises(SslAugError, match="subset=0"):
        data.subset(0)
    with pytest.raises(SslAugError, match="count or an index tensor"):
        data.subset([1, 2])


def test_loss_modules_equal_their_functions():
    g = torch.Generator().manual_seed(0)
    z_a, z_b = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
    assert torch.equal(NTXentLoss(0.2)(z_a, z_b), nt_xent(z_a, z_b, 0.2))
    views = torch.randn(3, 8, 16, generator=g)
    assert torch.equal(NTXentLoss()(views), nt_xent_multiview(views, 0.5))
    scores = [torch.randn(8, 5, generator=g) for _ in range(4)]
    assert torch.equal(SwaVLoss(temperature=0.2, epsilon=0.03)(scores), swav_loss(scores, 0.2, 0.03))
    assert torch.equal(SinkhornKnopp(0.05, 3)(scores[0]), sinkhorn(scores[0], 0.05, 3))
    q, z = torch.randn(2, 8, 16, generator=g), torch.randn(2, 8, 16, generator=g)
    assert torch.equal(BYOLLoss()(q, z), byol_loss(q, z))
    assert torch.equal(BYOLLoss()(list(q), list(z)), byol_loss(q, z))
    lam, perm = torch.rand(8, generator=g), torch.randperm(8, generator=g)
    assert torch.equal(IMixNTXentLoss(0.3)(z_a, z_b, lam, perm), imix_nt_xent(z_a, z_b, lam, perm, 0.3))
    with pytest.raises(SslAugError, match="temperature=0"):
        NTXentLoss(temperature=0)


def test_ntxent_module_against_a_plain_loop():
    """Independent check: NT-Xent by explicit loops over the 2N anchors."""
    g = torch.Generator().manual_seed(1)
    z = torch.nn.functional.normalize(torch.randn(8, 4, generator=g), dim=1)
    n, t = 4, 0.5
    total = 0.0
    for i in range(2 * n):
        pos = (i + n) % (2 * n)
        logits = [float(z[i] @ z[j]) / t for j in range(2 * n) if j != i]
        others = [j for j in range(2 * n) if j != i]
        total += -(float(z[i] @ z[pos]) / t - torch.logsumexp(torch.tensor(logits), 0).item())
        assert pos in others
    assert NTXentLoss(t)(z[:n], z[n:]).item() == pytest.approx(total / (2 * n), rel=1e-5)


def test_named_heads_shapes_and_layers():
    x = torch.randn(4, 64)
    for head, out in ((SimCLRProjectionHead(64, 32, 16), 16), (SwaVProjectionHead(64, 32, 8), 8),
                      (BYOLProjectionHead(64, 32, 12), 12)):
        assert head(x).shape == (4, out)
        kinds = [type(m).__name__ for m in head]
        assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert BYOLPredictionHead(12, 24, 12)(torch.randn(4, 12)).shape == (4, 12)
    assert SimCLRProjectionHead()[0].in_features == 2048 and SimCLRProjectionHead()[-1].out_features == 128
    assert BYOLProjectionHead()[0].out_features == 4096 and BYOLPredictionHead()[-1].out_features == 256
    prototypes = Prototypes(8, 30)
    assert torch.allclose(prototypes.weight.norm(dim=1), torch.ones(30))
