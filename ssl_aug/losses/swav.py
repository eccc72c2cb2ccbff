"""SwAV: Sinkhorn-Knopp codes and the swapped-prediction loss.

Shapes: B rows of scores, K prototypes, C crops. Computed in float32 (or float64 if asked) whatever
the autocast dtype of the inputs.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ssl_aug import distributed as dist_utils
from ssl_aug.errors import SslAugError
from ssl_aug.losses._checks import check_positive

__all__ = ["sinkhorn", "swav_loss"]


def _logsumexp(x: torch.Tensor, dim: int, across_ranks: bool) -> torch.Tensor:
    """logsumexp over ``dim`` (keepdim), optionally also over the same dim of every rank's ``x``."""
    if not across_ranks:
        return torch.logsumexp(x, dim=dim, keepdim=True)
    m = dist_utils.all_reduce_max(x.amax(dim=dim, keepdim=True))
    return dist_utils.all_reduce_sum(torch.exp(x - m).sum(dim=dim, keepdim=True)).log() + m


@torch.no_grad()
def sinkhorn(
    scores: torch.Tensor,
    epsilon: float = 0.05,
    iterations: int = 3,
    dtype: torch.dtype = torch.float32,
    distributed: bool | None = None,
) -> torch.Tensor:
    """Sinkhorn-Knopp codes for SwAV (the algorithm of facebookresearch/swav ``distributed_sinkhorn``).

    scores: (B, K) prototype scores of this rank's B rows (no gradient flows). The plan
    P = exp(scores / epsilon) / sum is alternately rescaled so each prototype (column) carries 1/K
    of the mass and each row 1/B_total, ``iterations`` times, the row step last; the codes are
    Q = B_total * P, so every row of Q sums to 1 and every prototype column sums to B_total / K at
    convergence (after few iterations only approximately). The first iteration runs in the log
    domain (same result, no overflow/underflow for large scores / epsilon). With ``distributed``
    (default: whenever a process group with > 1 rank is up) the column sums are all-reduced so the
    B_total = world * B rows of all ranks are solved jointly; every rank must pass the same B.
    ``dtype`` is the computation dtype. Returns Q (B, K) in at least float32.
    """
    check_positive("epsilon", epsilon)
    if scores.dim() != 2:
        raise SslAugError(f"sinkhorn scores have shape {tuple(scores.shape)}: they must be (B, K)")
    if iterations < 1:
        raise SslAugError(f"sinkhorn iterations={iterations!r} is not allowed: use an integer >= 1")
    if distributed is None:
        distributed = dist_utils.world_size() > 1
    rows, k = scores.shape
    total_rows = rows * (dist_utils.world_size() if distributed else 1)
    reduce_sum = dist_utils.all_reduce_sum if distributed else (lambda t: t)
    with torch.autocast(scores.device.type, enabled=False):
        # Iteration 1 in the log domain: no exp() can overflow, and afterwards every row and every
        # column holds mass >= 1 / (B_total * K), so the plain iterations below cannot divide by an
        # underflowed zero. (swav's initial division by the total is a constant that the column
        # step removes.)
        log_q = scores.detach().to(dtype) / epsilon
        log_q = log_q - _logsumexp(log_q, 0, distributed)  # equal column mass (1/K cancels below)
        q = torch.softmax(log_q, dim=1).div_(total_rows)  # each row: 1/B_total
        for _ in range(iterations - 1):
            q /= reduce_sum(q.sum(dim=0, keepdim=True)) * k
            q /= q.sum(dim=1, keepdim=True) * total_rows
        q *= total_rows
    return q.to(torch.promote_types(scores.dtype, torch.float32))


def swav_loss(
    scores_per_crop: Sequence[torch.Tensor],
    temperature: float = 0.1,
    epsilon: float = 0.05,
    iterations: int = 3,
    crops_for_assign: Sequence[int] = (0, 1),
    queue_scores: Sequence[torch.Tensor | None] | None = None,
    sinkhorn_dtype: torch.dtype = torch.float32,
    distributed: bool | None = None,
    return_codes: bool = False,
    reduction: str = "mean",
):
    """SwAV swapped-prediction loss (as facebookresearch/swav ``main_swav.py``).

    scores_per_crop: C tensors (B, K), the prototype scores <z, c_k> of each crop's B images.
    For each assign crop a in ``crops_for_assign`` the codes q_a = sinkhorn(scores_a) are computed
    without gradient (with ``queue_scores[i]`` (Q, K) of earlier batches prepended for the i-th assign
    crop and only the last B rows kept); every other crop v predicts them:

        loss = 1/|assign| sum_a 1/(C - 1) sum_{v != a} mean_b [ -sum_k q_a[b, k] log softmax(s_v[b] / T)_k ]

    Returns the 0-d loss, or ``(loss, codes)`` with codes a list of (B, K) per assign crop when
    ``return_codes``. A model whose predictions are uniform gets exactly ln(K).
    ``reduction="none"`` returns the (B,) per-image terms instead (their mean is the loss).
    """
    check_positive("temperature", temperature)
    if reduction not in ("mean", "none"):
        raise SslAugError(f"swav_loss reduction={reduction!r} is not allowed; use 'mean' or 'none'")
    n_crops = len(scores_per_crop)
    if n_crops < 2:
        raise SslAugError(f"swav_loss got {n_crops} crop(s): it needs at least 2")
    bad = [c for c in crops_for_assign if not (isinstance(c, int) and 0 <= c < n_crops)]
    if bad or len(crops_for_assign) == 0:
        raise SslAugError(
            f"crops_for_assign={tuple(crops_for_assign)!r} is not allowed: "
            f"use distinct crop indices in 0..{n_crops - 1}"
        )
    b = scores_per_crop[0].shape[0]
    if any(s.dim() != 2 or s.shape != scores_per_crop[0].shape for s in scores_per_crop):
        shapes = [tuple(s.shape) for s in scores_per_crop]
        raise SslAugError(
            f"swav_loss crop scores have shapes {shapes}: all crops must be (B, K) with equal B and K"
        )
    with torch.autocast(scores_per_crop[0].device.type, enabled=False):
        log_p = [torch.log_softmax(s.float() / temperature, dim=1) for s in scores_per_crop]
    log_p_sum = sum(log_p)  # (B, K): "every other crop" is then one subtraction per assign crop
    loss = log_p_sum.new_zeros(() if reduction == "mean" else (b,))
    codes = []
    for i, a in enumerate(crops_for_assign):
        s = scores_per_crop[a].detach()
        if queue_scores is not None and queue_scores[i] is not None:
            s = torch.cat([queue_scores[i].detach().to(s.dtype), s])
        q = sinkhorn(s, epsilon, iterations, dtype=sinkhorn_dtype, distributed=distributed)[-b:].float()
        codes.append(q)
        if reduction == "mean":
            loss = loss - (q * (log_p_sum - log_p[a])).sum() / (b * (n_crops - 1))
        else:
            loss = loss - (q * (log_p_sum - log_p[a])).sum(dim=1) / (n_crops - 1)
    loss = loss / len(crops_for_assign)
    return (loss, codes) if return_codes else loss
