"""MixUp / CutMix / CutOut: reference formulas, label rows sum to 1, areas match weights, seeding."""

import pytest
import torch

from ssl_aug.augment import cutmix, cutout, mixup
from ssl_aug.errors import SslAugError


def batch(n=64, side=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    # distinct constant-free images: every pixel value identifies its image (image i holds i + noise/2)
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1) + 0.5 * torch.rand(n, 3, side, side, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return x, y


def test_mixup_matches_formula_and_labels_sum_to_one():
    x, y = batch()
    m = mixup(x, y, alpha=0.4, generator=torch.Generator().manual_seed(1), num_classes=10)
    lam = m.lam.view(-1, 1, 1, 1)
    assert torch.allclose(m.images, lam * x + (1 - lam) * x[m.perm], atol=1e-5)
    assert torch.allclose(m.targets.sum(1), torch.ones(len(x)))
    onehot = torch.nn.functional.one_hot(y, 10).float()
    assert torch.allclose(m.targets, m.lam[:, None] * onehot + (1 - m.lam[:, None]) * onehot[m.perm])
    assert sorted(m.perm.tolist()) == list(range(len(x)))


def test_mixup_lambda_distribution_and_seed():
    x = torch.zeros(10_000, 1, 1, 1)
    lam = mixup(x, alpha=1.0, generator=torch.Generator().manual_seed(0)).lam
    # Beta(1, 1) = uniform: mean 1/2 (sd 1/sqrt(12 n)), a quarter of the mass below 1/4
    assert abs(lam.mean().item() - 0.5) < 4 * (1 / 12) ** 0.5 / 100
    assert abs((lam < 0.25).float().mean().item() - 0.25) < 4 * (0.25 * 0.75 / 10_000) ** 0.5
    a = mixup(x[:50], alpha=1.0, generator=torch.Generator().manual_seed(3))
    b = mixup(x[:50], alpha=1.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.lam, b.lam) and torch.equal(a.perm, b.perm)


def test_cutmix_area_equals_label_weight():
    x, y = batch()
    m = cutmix(x, y, alpha=1.0, generator=torch.Generator().manual_seed(2), num_classes=10)
    own = (m.images.floor() == x.floor()).float().mean((1, 2, 3))  # pixels still from the image itself
    partner_is_self = m.perm == torch.arange(len(x))
    assert torch.allclose(own[~partner_is_self], m.lam[~partner_is_self], atol=1e-6)
    pasted = m.images != x
    assert pasted.any() and torch.equal(m.images[pasted], x[m.perm][pasted])
    assert torch.allclose(m.targets.sum(1), torch.ones(len(x)))
    assert (m.lam >= 0).all() and (m.lam <= 1).all()
    # soft (N, K) labels are accepted too
    m2 = cutmix(x, torch.softmax(torch.randn(len(x), 5), 1), generator=torch.Generator().manual_seed(2))
    assert torch.allclose(m2.targets.sum(1), torch.ones(len(x)), atol=1e-6)


def test_cutmix_boxes_are_rectangles():
    x, _ = batch(32, 20)
    m = cutmix(x, alpha=0.5, generator=torch.Generator().manual_seed(5))
    diff = (m.images != x).any(1)  # (N, H, W)
    for n in range(len(x)):
        if m.perm[n] == n or not diff[n].any():
            continue
        rows, cols = diff[n].any(1).nonzero().squeeze(1), diff[n].any(0).nonzero().squeeze(1)
        assert diff[n][rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()
        assert int(diff[n].sum()) == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)


def test_cutout_zero_patch_and_weights():
    x, y = batch(40, 16)
    m = cutout(x, y, size=6, generator=torch.Generator().manual_seed(0), num_classes=10)
    zeros = (m.images == 0).all(1).float().mean((1, 2))
    assert torch.allclose(1 - zeros, m.lam)
    assert (zeros <= 36 / 256 + 1e-6).all() and (zeros > 0).all()
    assert torch.equal(m.targets, torch.nn.functional.one_hot(y, 10).float())
    untouched = (m.images != 0).all(1, keepdim=True).expand_as(x)
    assert torch.equal(m.images[untouched], x[untouched])


def test_uint8_input_and_bad_args():
    x8 = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    assert mixup(x8, generator=torch.Generator().manual_seed(0)).images.dtype == torch.float32
    with pytest.raises(SslAugError, match="alpha"):
        mixup(x8, alpha=0)
    with pytest.raises(SslAugError, match="num_classes"):
        cutmix(x8, torch.zeros(4, dtype=torch.long))
    with pytest.raises(SslAugError, match="size"):
        cutout(x8, size=0)
    with pytest.raises(SslAugError, match="labels"):
        mixup(x8, torch.zeros(4, 2, 2))
