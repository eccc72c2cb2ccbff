"""Calibration of class probabilities: expected calibration error (equal-width confidence bins), negative
log-likelihood, and the per-bin numbers a reliability diagram shows. probs (N, C) rows sum to 1, labels (N,)."""

from __future__ import annotations

import torch

from ssl_aug.errors import SslAugError

__all__ = ["expected_calibration_error", "negative_log_likelihood", "reliability_bins", "calibration_report"]


def _check(probs: torch.Tensor, labels: torch.Tensor, n_bins: int):
    if probs.ndim != 2 or labels.ndim != 1 or probs.shape[0] != labels.shape[0]:
        raise SslAugError(f"calibration needs probs (N, C) and labels (N,), got {tuple(probs.shape)} and "
                          f"{tuple(labels.shape)}")
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise SslAugError(f"n_bins={n_bins!r} is not allowed; use an integer >= 1 (15 is standard)")


def _bin_index(conf: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Bin b covers confidences in (b/n_bins, (b+1)/n_bins]; confidence 0 goes to bin 0."""
    return torch.clamp(torch.ceil(conf.double() * n_bins).long() - 1, 0, n_bins - 1)


def reliability_bins(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> dict:
    """Per equal-width confidence bin: {"edges" (n_bins+1), "count", "accuracy", "confidence"} as lists
    (accuracy/confidence of an empty bin are None). Confidence = max probability, prediction = argmax."""
    _check(probs, labels, n_bins)
    conf, pred = probs.double().max(1)
    correct = (pred == labels.to(pred.device)).double()
    b = _bin_index(conf, n_bins)
    count = torch.bincount(b, minlength=n_bins).double()
    acc = torch.bincount(b, weights=correct, minlength=n_bins)
    cs = torch.bincount(b, weights=conf, minlength=n_bins)
    nz = count > 0
    return {"edges": [i / n_bins for i in range(n_bins + 1)], "count": count.long().tolist(),
            "accuracy": [float(a / c) if c > 0 else None for a, c in zip(acc, count)],
            "confidence": [float(s / c) if c > 0 else None for s, c in zip(cs, count)],
            "_sums": (count[nz], acc[nz], cs[nz])}


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """ECE = sum_b |B_b|/N * |acc(B_b) - conf(B_b)| over n_bins equal-width confidence bins on (0, 1]."""
    bins = reliability_bins(probs, labels, n_bins)
    _, acc, conf = bins["_sums"]
    return float((acc - conf).abs().sum() / max(1, labels.shape[0]))


def negative_log_likelihood(probs: torch.Tensor, labels: torch.Tensor, eps: float = 1e-12) -> float:
    """Mean -log p(true class) (probabilities clamped at eps so a confident miss stays finite)."""
    _check(probs, labels, 1)
    p = probs.double().gather(1, labels.long().to(probs.device)[:, None]).clamp_min(eps)
    return float(-p.log().mean())


def calibration_report(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> dict:
    """{"ece", "nll", "reliability": reliability_bins without internals} (JSON-friendly)."""
    bins = reliability_bins(probs, labels, n_bins)
    bins.pop("_sums")
    return {"ece": expected_calibration_error(probs, labels, n_bins), "nll": negative_log_likelihood(probs, labels),
            "reliability": bins}
