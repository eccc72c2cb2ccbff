"""Kernel view of augmentation (Dao et al. 2019): the invariance probe's per-transform feature variance."""

import numpy as np
import torch
from torch import nn

from ssl_aug.evaluation.invariance import invariance_probe


def test_variance_matches_numpy_and_is_zero_for_invariant_transforms():
    torch.manual_seed(0)
    enc = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    x = torch.randint(0, 256, (12, 3, 10, 10), dtype=torch.uint8)
    fns = {"identity": [lambda v: v], "two": [lambda v: v.flip(-1), lambda v: 255 - v]}
    r = invariance_probe(enc, x, [0.5] * 3, [0.25] * 3, transforms=fns)
    assert r["families"]["identity"]["variance"] < 1e-12

    def feats(v):
        with torch.no_grad():
            f = enc(((v.float() / 255) - 0.5) / 0.25).numpy().astype(np.float64)
        return f / np.linalg.norm(f, axis=1, keepdims=True)

    stack = np.stack([feats(x), feats(x.flip(-1)), feats(255 - x)])
    ref = np.mean([np.mean([np.sum((stack[k, i] - stack[:, i].mean(0)) ** 2) for k in range(3)]) for i in range(12)])
    assert abs(r["families"]["two"]["variance"] - ref) < 1e-5
    # with one transform the variance is (1 - cos) / 2 per image
    one = invariance_probe(enc, x, [0.5] * 3, [0.25] * 3, transforms={"neg": [lambda v: 255 - v]})["families"]["neg"]
    assert abs(one["variance"] - (1 - one["sim"]) / 2) < 1e-6


def test_invariance_table_shows_score_and_variance():
    from ssl_aug.evaluation import invariance_table

    results = {"enc": {"families": {"blur": {"score": 0.5, "variance": 0.0123}}, "sim_rand": 0.1}}
    table = invariance_table(results)
    assert "| blur | 0.500 (0.0123) |" in table and "feature variance" in table
