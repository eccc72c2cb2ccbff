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
import torch.nn.functional as F
from torch import nn

from ssl_aug.errors import SslAugError
from ssl_aug.losses import nt_xent_per_sample, swav_loss
from ssl_aug.methods.base import check_views, encode_views
from ssl_aug.methods.simclr import SimCLR
from ssl_aug.methods.swav import SwAV

__all__ = ["preserved_norm_buffers", "per_image_losses", "select_per_image", "hard_views"]


@contextlib.contextmanager
def preserved_norm_buffers(module: nn.Module):
    """Restore every BatchNorm-style running buffer (mean, var, num_batches_tracked) of `module` on exit."""
    saved = [(buf, buf.clone()) for m in module.modules() if isinstance(m, nn.modules.batchnorm._NormBase)
             for buf in m.buffers(recurse=False)]
    try:
        yield
    finally:
        with torch.no_grad():
            for buf, copy in saved:
                buf.copy_(copy)


@torch.no_grad()
def per_image_losses(method: nn.Module, views: list[torch.Tensor]) -> torch.Tensor:
    """The method's loss per image for one view set: V x (N, 3, H, W) -> (N,) float32, no gradient.

    Leaves parameters and buffers of `method` unchanged (SwAV's queue is neither read nor pushed)."""
    n = check_views(views)
    with preserved_norm_buffers(method):
        if isinstance(method, SimCLR):
            z = method.projector(encode_views(method.backbone, views)).view(len(views), n, -1)
            return nt_xent_per_sample(z, method.temperature)
        if isinstance(method, SwAV):
            if max(method.crops_for_assign) >= len(views):
                raise SslAugError(f"crops_for_assign={method.crops_for_assign!r} is not allowed with "
                                  f"{len(views)} crops: use indices in 0..{len(views) - 1}")
            z = F.normalize(method.projector(encode_views(method.backbone, views)), dim=1)
            prototypes = F.normalize(method.prototypes.weight, dim=1)
            scores = (z @ prototypes.t()).chunk(len(views))
            return swav_loss(scores, method.temperature, method.epsilon, method.sinkhorn_iterations,
                             method.crops_for_assign, sinkhorn_dtype=method.sinkhorn_dtype, reduction="none")
    raise SslAugError(f"hard view sampling (train.view_candidates > 1) does not support method "
                      f"{type(method).__name__}; allowed: SimCLR, SwAV")


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
