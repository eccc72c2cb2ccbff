"""Hard (uncertainty-based) view sampling: draw K candidate view sets per batch, score every image's
candidates with the current model (no gradient, model state unchanged) and keep, per image, the
candidate with the highest loss.

Scoring runs in the module's current mode. The trainer is in train mode, so BatchNorm normalises with
the statistics of the candidate batch, exactly as the training step would on those views (eval-mode
running averages lag the weights and are far off early in training); the running buffers that a
train-mode forward updates are saved and restored, so parameters and buffers are bit-identical after
scoring. SimCLR scores are the per-image multi-view NT-Xent within each candidate batch; SwAV scores
are the per-image swapped-prediction loss (Sinkhorn codes of the candidate batch, no queue, prototypes
normalised as the next training forward would see them, without touching them).
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import nn

from ssl_aug.errors import SslAugError
from ssl_aug.methods.base import METHODS, Method

__all__ = ["per_image_losses", "select_per_image", "hard_views"]


def per_image_losses(method: Method, views: list[torch.Tensor]) -> torch.Tensor:
    """The method's loss per image for one view set: V x (N, 3, H, W) -> (N,) float32, no gradient,
    parameters and buffers of `method` unchanged (the method's own ``per_image_loss``)."""
    if not isinstance(method, Method):
        allowed = ", ".join(c.__name__ for c in METHODS.values() if c.has_per_image_loss())
        raise SslAugError(f"hard view sampling (train.view_candidates > 1) does not support method "
                          f"{type(method).__name__}; allowed: {allowed}")
    return method.per_image_loss(views).float()


def select_per_image(candidates: list[list[torch.Tensor]], scores: torch.Tensor) -> list[torch.Tensor]:
    """Per image, the views of the candidate with the highest score (first one on ties).

    candidates: K view sets, each V x (N, 3, s_v, s_v); scores (K, N). Returns V x (N, 3, s_v, s_v),
    same dtypes and memory format as the candidates."""
    k = len(candidates)
    if scores.dim() != 2 or scores.shape[0] != k or scores.shape[1] != candidates[0][0].shape[0]:
        raise SslAugError(f"scores of shape {tuple(scores.shape)} do not fit {k} candidates of "
                          f"{candidates[0][0].shape[0]} images: they must be (K, N)")
    best = scores.argmax(dim=0)  # (N,)
    masks = [(best == i).view(-1, 1, 1, 1) for i in range(1, k)]
    selected = []
    for v in range(len(candidates[0])):
        out = candidates[0][v]
        for i, mask in enumerate(masks, start=1):
            out = torch.where(mask, candidates[i][v], out)
        selected.append(out)
    return selected


def hard_views(method: nn.Module, make_views: Callable[[], list[torch.Tensor]], k: int,
               autocast: contextlib.AbstractContextManager | None = None) -> list[torch.Tensor]:
    """Draw `k` candidate view sets with `make_views()` (in order, so a seeded generator replays them),
    score each image's candidates with :func:`per_image_losses` (under `autocast` if given) and return
    the per-image hardest views: V x (N, 3, s_v, s_v), shaped like one `make_views()` result."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise SslAugError(f"view_candidates={k!r} is not allowed: use an integer >= 1 (1 = random views)")
    candidates = [make_views() for _ in range(k)]
    if k == 1:
        return candidates[0]
    with autocast or contextlib.nullcontext():
        scores = torch.stack([per_image_losses(method, views) for views in candidates])
    return select_per_image(candidates, scores)
