"""Calibration: ECE (15 equal-width bins) and NLL against plain-loop references; reliability bins."""

import math

import pytest
import torch

from ssl_aug.errors import SslAugError
from ssl_aug.evaluation.calibration import (calibration_report, expected_calibration_error, negative_log_likelihood,
                                            reliability_bins)


def loop_ece(probs, labels, n_bins=15):
    """Reference: bins (lo, hi] by max probability, |mean accuracy - mean confidence| weighted by bin share."""
    rows = [[float(v) for v in r] for r in probs]
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        members = [i for i, r in enumerate(rows) if (lo < max(r) <= hi) or (b == 0 and max(r) == 0)]
        if not members:
            continue
        acc = sum(rows[i].index(max(rows[i])) == int(labels[i]) for i in members) / len(members)
        conf = sum(max(rows[i]) for i in members) / len(members)
        total += len(members) / len(rows) * abs(acc - conf)
    return total


def test_ece_and_nll_match_plain_loops():
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(3 * torch.randn(300, 5, generator=g, dtype=torch.float64), 1)
    labels = torch.randint(0, 5, (300,), generator=g)
    for bins in (15, 4):
        assert abs(expected_calibration_error(probs, labels, bins) - loop_ece(probs, labels, bins)) < 1e-12
    nll = sum(-math.log(float(probs[i, labels[i]])) for i in range(300)) / 300
    assert abs(negative_log_likelihood(probs, labels) - nll) < 1e-12


def test_perfectly_calibrated_and_overconfident_cases():
    # confidence 0.7 on every sample, 70 % of them right: ECE 0
    probs = torch.tensor([[0.7, 0.3]] * 10, dtype=torch.float64)
    labels = torch.tensor([0] * 7 + [1] * 3)
    assert expected_calibration_error(probs, labels) < 1e-12
    # confidence 1.0 and half wrong: ECE 0.5, NLL large but finite
    probs = torch.tensor([[1.0, 0.0]] * 4)
    labels = torch.tensor([0, 1, 0, 1])
    assert abs(expected_calibration_error(probs, labels) - 0.5) < 1e-12
    assert math.isfinite(negative_log_likelihood(probs, labels)) and negative_log_likelihood(probs, labels) > 10


def test_reliability_bins_and_report():
    probs = torch.tensor([[0.95, 0.05], [0.55, 0.45], [0.52, 0.48], [0.99, 0.01]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 0])
    bins = reliability_bins(probs, labels, n_bins=10)
    assert len(bins["edges"]) == 11 and sum(bins["count"]) == 4
    assert bins["count"][9] == 2 and bins["accuracy"][9] == 1.0 and abs(bins["confidence"][9] - 0.97) < 1e-9
    assert bins["count"][5] == 2 and bins["accuracy"][5] == 0.5 and abs(bins["confidence"][5] - 0.535) < 1e-9
    assert bins["accuracy"][0] is None
    report = calibration_report(probs, labels, n_bins=10)
    assert set(report) == {"ece", "nll", "reliability"} and "_sums" not in report["reliability"]
    assert abs(report["ece"] - (2 / 4 * 0.03 + 2 / 4 * 0.035)) < 1e-9
    with pytest.raises(SslAugError, match="n_bins"):
        expected_calibration_error(probs, labels, 0)
    with pytest.raises(SslAugError, match="probs"):
        expected_calibration_error(probs[:, 0], labels)


def test_tta_evaluate_reports_ece_with_and_without_tta():
    from torch import nn

    from ssl_aug.evaluation.tta import tta_evaluate, tta_predict

    torch.manual_seed(0)
    enc = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    head = nn.Linear(4, 3)
    x = torch.randint(0, 256, (30, 3, 12, 12), dtype=torch.uint8)
    y = torch.arange(30) % 3
    r = tta_evaluate(enc, head, x, y, [0.5] * 3, [0.25] * 3, views="ten_crop")
    plain, tta = tta_predict(enc, head, x, [0.5] * 3, [0.25] * 3, views="ten_crop")
    assert r["ece"] == expected_calibration_error(plain, y) and r["ece_tta"] == expected_calibration_error(tta, y)
    assert r["ece"] != r["ece_tta"]
