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


# ---------------------------------------------------------------- GridMix, saliency CutMix, SnapMix
from ssl_aug.augment.mix import (box_sums, gridmix, image_saliency, mix_batch, parse_mix,  # noqa: E402
                                 saliency_cutmix, snap_weights, snapmix)


def test_gridmix_cells_and_label_share_match_a_loop():
    x, y = batch(24, 12)
    grid = 3
    m = gridmix(x, y, alpha=1.0, grid=grid, generator=torch.Generator().manual_seed(4), num_classes=10)
    for n in range(len(x)):
        p = int(m.perm[n])
        from_partner = 0
        for ci in range(grid):
            for cj in range(grid):
                cell = (slice(ci * 4, ci * 4 + 4), slice(cj * 4, cj * 4 + 4))  # 12 / 3 = 4 pixels per cell
                got = m.images[n][:, cell[0], cell[1]]
                if torch.equal(got, x[p][:, cell[0], cell[1]]):
                    from_partner += 16
                else:
                    assert torch.equal(got, x[n][:, cell[0], cell[1]])  # whole cells, never partial
        if p != n:
            assert abs(m.lam[n].item() - (1 - from_partner / 144)) < 1e-6
    onehot = torch.nn.functional.one_hot(y, 10).float()
    assert torch.allclose(m.targets, m.lam[:, None] * onehot + (1 - m.lam[:, None]) * onehot[m.perm])
    assert 0.2 < m.lam.mean().item() < 0.8  # Beta(1, 1): about half the cells swapped on average


def _loop_box_sum(s, top, left, bh, bw):
    return sum(float(s[r, c]) for r in range(top, top + bh) for c in range(left, left + bw))


def test_box_sums_match_plain_loops():
    g = torch.Generator().manual_seed(0)
    s = torch.rand(3, 7, 9, generator=g)
    bh, bw = torch.tensor([2, 7, 0]), torch.tensor([3, 1, 4])
    sums = box_sums(s, bh, bw)
    for n in range(3):
        for r in range(7):
            for c in range(9):
                if r + bh[n] <= 7 and c + bw[n] <= 9:
                    assert abs(sums[n, r, c].item() - _loop_box_sum(s[n], r, c, int(bh[n]), int(bw[n]))) < 1e-9
                else:
                    assert torch.isnan(sums[n, r, c])


def test_saliency_cutmix_moves_the_partners_most_salient_box_to_the_least_salient_place():
    x, y = batch(16, 10)
    sal = torch.rand(16, 10, 10, generator=torch.Generator().manual_seed(1))
    m = saliency_cutmix(x, y, alpha=1.0, saliency=sal, generator=torch.Generator().manual_seed(2), num_classes=10)
    for n in range(16):
        p = int(m.perm[n])
        area = round((1 - m.lam[n].item()) * 100)
        changed = (m.images[n] != x[n]).any(0)
        if p == n or area == 0:
            continue
        rows, cols = changed.any(1).nonzero().squeeze(1), changed.any(0).nonzero().squeeze(1)
        t, l = int(rows.min()), int(cols.min())
        bh, bw = int(rows.max()) - t + 1, int(cols.max()) - l + 1
        assert bh * bw == area
        # plain-loop search: the least salient box of the image, the most salient box of the partner
        cands = [(r, c) for r in range(10 - bh + 1) for c in range(10 - bw + 1)]
        own = [_loop_box_sum(sal[n], r, c, bh, bw) for r, c in cands]
        part = [_loop_box_sum(sal[p], r, c, bh, bw) for r, c in cands]
        assert (t, l) == cands[own.index(min(own))]
        sr, sc = cands[part.index(max(part))]
        assert torch.equal(m.images[n][:, t:t + bh, l:l + bw], x[p][:, sr:sr + bh, sc:sc + bw])
    assert torch.allclose(m.targets.sum(1), torch.ones(16))


def test_image_saliency_is_zero_on_flat_images_and_finds_an_edge():
    flat = torch.full((2, 3, 8, 8), 0.3)
    assert torch.equal(image_saliency(flat), torch.zeros(2, 8, 8))
    edge = torch.zeros(1, 3, 8, 8)
    edge[..., 4:] = 1.0
    s = image_saliency(edge)[0]
    assert s[:, 3:5].min() > 0 and s[:, :3].max() == 0 and s[:, 5:].max() == 0


def test_snapmix_label_weights_are_activation_mass_in_the_boxes():
    x, y = batch(20, 16)
    cams = torch.rand(20, 16, 16, generator=torch.Generator().manual_seed(3)) ** 3
    m = snapmix(x, y, cams, alpha=1.0, generator=torch.Generator().manual_seed(5), num_classes=10)
    onehot = torch.nn.functional.one_hot(y, 10).float()
    checked = 0
    for n in range(20):
        p = int(m.perm[n])
        changed = (m.images[n] != x[n]).any(0)
        if p == n or not changed.any():
            continue
        rows, cols = changed.any(1).nonzero().squeeze(1), changed.any(0).nonzero().squeeze(1)
        t, l, b, r = int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1
        rho_a = 1 - cams[n, t:b, l:r].sum() / cams[n].sum()
        assert abs(m.lam[n].item() - rho_a.item()) < 1e-5
        rho_b = m.targets[n] @ onehot[p] if y[p] != y[n] else None
        if rho_b is not None:
            assert 0 <= rho_b.item() <= 1
            assert abs(m.targets[n] @ onehot[n] - rho_a) < 1e-5
        checked += 1
    assert checked > 5


def test_snap_weights_match_plain_loops():
    g = torch.Generator().manual_seed(7)
    cams = torch.rand(4, 6, 5, generator=g)
    perm = torch.tensor([2, 0, 3, 1])
    t = lambda *v: torch.tensor(v)  # noqa: E731
    box_a = (t(0, 1, 2, 0), t(0, 2, 1, 3), t(3, 2, 4, 2), t(2, 3, 0, 2))  # image 2's box is empty
    box_b = (t(1, 0, 0, 4), t(1, 0, 2, 1), t(2, 6, 3, 2), t(4, 5, 2, 3))
    rho_a, rho_b = snap_weights(cams, perm, box_a, box_b)
    for n in range(4):
        if n == 2:
            assert rho_a[n] == 1 and rho_b[n] == 0
            continue
        a = _loop_box_sum(cams[n], *(int(v[n]) for v in box_a)) / float(cams[n].sum())
        b = _loop_box_sum(cams[perm[n]], *(int(v[n]) for v in box_b)) / float(cams[perm[n]].sum())
        assert abs(rho_a[n].item() - (1 - a)) < 1e-6 and abs(rho_b[n].item() - b) < 1e-6


def test_mix_batch_and_parse_mix_errors():
    x, y = batch(8, 8)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    assert torch.equal(mix_batch("mixup", x, y, generator=g(), num_classes=10).images,
                       mixup(x, y, generator=g(), num_classes=10).images)
    assert torch.equal(mix_batch("gridmix", x, grid=2, generator=g()).images, gridmix(x, grid=2, generator=g()).images)
    with pytest.raises(SslAugError, match="mode='mixes'"):
        mix_batch("mixes", x)
    with pytest.raises(SslAugError, match="cams"):
        mix_batch("snapmix", x, y, num_classes=10)
    assert parse_mix({"mode": "cutmix"}) == {"mode": "cutmix", "alpha": 1.0, "p": 1.0, "grid": 4, "cutout_size": 8}
    for bad, word in (({"mode": "mixup", "alpha": 0}, "alpha"), ({"mode": "mixup", "alpha": -1.0}, "alpha"),
                      ({"mode": "mixup", "p": 1.5}, "p=1.5"), ({"mode": "mixup", "p": -0.1}, "p="),
                      ({"mode": "blend"}, "mode"), ({"mode": "mixup", "beta": 1}, "beta"), ("mixup", "table")):
        with pytest.raises(SslAugError, match=word):
            parse_mix(bad)
    with pytest.raises(SslAugError, match="saliency"):
        saliency_cutmix(x, saliency=torch.ones(8, 4, 4))
