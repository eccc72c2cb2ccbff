"""Seeded, stratified held-out splits: evaluate on images the kNN bank / probe never saw when a data
set has only one split (a plain class-per-folder tree)."""

from __future__ import annotations

import torch

__all__ = ["stratified_holdout"]


def stratified_holdout(labels: torch.Tensor, fraction: float = 0.2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(bank indices, held-out indices), both sorted int64, disjoint, covering every labelled image.

    labels: (N,) int64, -1 = unlabeled (left out of both). Each class with n >= 2 images gives
    round(fraction * n) of them (at least 1, at most n - 1) to the held-out part, chosen by a seeded
    permutation; a class with one image stays in the bank."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    gen = torch.Generator().manual_seed(seed)
    bank, held = [], []
    for c in labels[labels >= 0].unique().tolist():
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        n_held = min(max(round(fraction * len(idx)), 1), len(idx) - 1) if len(idx) >= 2 else 0
        held.append(idx[:n_held])
        bank.append(idx[n_held:])
    empty = torch.zeros(0, dtype=torch.int64)
    return (torch.cat(bank).sort().values if bank else empty), (torch.cat(held).sort().values if held else empty)
