"""Seeded class-balanced subsets of a labelled set."""

from __future__ import annotations

import math

import torch

__all__ = ["balanced_subset"]


def balanced_subset(labels: torch.Tensor, size: int, seed: int) -> torch.Tensor:
    """Indices (sorted, int64) of a seeded subset of `size` images with (nearly) equal counts per class.

    labels: (N,) int64. Classes with fewer than ceil(size / classes) images give all they have."""
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=gen)
    classes = labels[order].unique()
    per_class = math.ceil(size / len(classes))
    picked = [order[labels[order] == c][:per_class] for c in classes]
    chosen = torch.cat(picked)
    chosen = chosen[torch.randperm(len(chosen), generator=gen)][:size]
    return chosen.sort().values
