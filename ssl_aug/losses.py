"""Contrastive and clustering losses as pure functions: NT-Xent (SimCLR) and swapped prediction (SwAV).

Shapes: N images per rank, V views, D embedding dim, K prototypes, B rows of scores.
Losses compute in float32 (or float64 if given) whatever the autocast dtype of their inputs.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ssl_aug import distributed as dist_utils
from ssl_aug.errors import SslAugError

__all__ = ["nt_xent", "nt_xent_multiview", "nt_xent_per_sample", "sinkhorn", "swav_loss"]


def _check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise SslAugError(f"{name}={value!r} is not allowed: it must be a number > 0")


def nt_xent(
    z_a: torch.Tensor, z_b: torch.Tensor, temperature: float = 0.5, gather: bool = False
) -> torch.Tensor:
    """SimCLR's NT-Xent loss for two views.

    z_a, z_b: (N, D) embeddings of the same N images (row i of both is one image); normalised inside.
    The 2N x 2N cosine-similarity matrix is divided by ``temperature``, self-similarities are
    masked, and each of the 2N anchors takes a cross-entropy with the other view of its image as the
    positive and the remaining 2N - 2 rows as negatives; the result is the mean over anchors.
    With ``gather=True`` the embeddings of all ranks are gathered with gradient and this rank's 2N
    rows are the anchors against all 2 * world * N rows. Returns a 0-d tensor.
    """
    if z_a.shape != z_b.shape or z_a.dim() != 2:
        raise SslAugError(
            f"nt_xent views have shapes {tuple(z_a.shape)} and {tuple(z_b.shape)}: both must be (N, D)"
        )
    return nt_xent_multiview(torch.stack([z_a, z_b]), temperature, gather)


def nt_xent_multiview(z_views, temperature: float = 0.5, gather: bool = False) -> torch.Tensor:
    """Multi-view NT-Xent: all views of one image are positives of each other (multi-crop SimCLR).

    z_views: list of V tensors (N, D) or one tensor (V, N, D), V >= 2; normalised inside.
    With s_ij = cos(z_i, z_j) / temperature over all M = V * N rows, P(i) the V - 1 other views of
    anchor i's image and A(i) all rows except i:

        loss = 1/M sum_i [ -1/|P(i)| sum_{p in P(i)} log( exp(s_ip) / sum_{a in A(i)} exp(s_ia) ) ]

    (the SupCon "L_out" form with the image as the label). V = 2 is exactly :func:`nt_xent`.
    With ``gather=True`` rows from all ranks join A(i) (the anchors stay this rank's M rows); every
    rank must pass the same N. Returns a 0-d tensor.
    """
    z = _views_tensor(z_views, temperature, "nt_xent_multiview")
    with torch.autocast(z.device.type, enabled=False):  # similarities in float32 even under AMP
        return _nt_xent_full_precision(z, float(temperature), gather)


def nt_xent_per_sample(z_views, temperature: float = 0.5) -> torch.Tensor:
    """Per-image multi-view NT-Xent: z (V, N, D) (or a list of V (N, D)) -> (N,) losses.

    Entry j is the mean over image j's V anchors of the :func:`nt_xent_multiview` anchor term (negatives:
    all other rows of this batch, this rank only), so ``nt_xent_per_sample(z).mean()`` equals
    ``nt_xent_multiview(z)``. Used to score candidate views (hard view sampling).
    """
    z = _views_tensor(z_views, temperature, "nt_xent_per_sample")
    with torch.autocast(z.device.type, enabled=False):
        return _nt_xent_full_precision(z, float(temperature), False, per_sample=True)


def _views_tensor(z_views, temperature: float, name: str) -> torch.Tensor:
    """Validate temperature and views; list of V (N, D) or (V, N, D) -> float32-or-wider (V, N, D)."""
    _check_positive("temperature", temperature)
    z = torch.stack(list(z_views)) if isinstance(z_views, (list, tuple)) else z_views
    if z.dim() != 3 or z.shape[0] < 2:
        raise SslAugError(f"{name} got shape {tuple(z.shape)}: it needs (V, N, D) with V >= 2 views")
    if not z.is_floating_point() or z.dtype in (torch.float16, torch.bfloat16):
        z = z.float()
    return z


def _nt_xent_full_precision(z: torch.Tensor, temperature: float, gather: bool,
                            per_sample: bool = False) -> torch.Tensor:
    v, n, d = z.shape
    z = F.normalize(z, dim=-1)
    world, offset = 1, 0
    keys = z
    if gather and dist_utils.world_size() > 1:
        world, offset = dist_utils.world_size(), dist_utils.rank() * n
        # (V, N, D) -> (N, V, D) rows so one gather keeps images together: (world * N, V, D).
        keys = dist_utils.gather_with_grad(z.transpose(0, 1).contiguous()).transpose(0, 1)
    anchors = z.reshape(v * n, d)
    logits = anchors @ keys.reshape(v * world * n, d).t() / temperature  # (V*N, V*world*N)
    # Each anchor (view a, image j) sits at key column a * world * N + offset + j.
    cols = torch.arange(v, device=z.device)[:, None] * (world * n) + offset + torch.arange(n, device=z.device)
    log_prob = torch.log_softmax(logits.scatter(1, cols.reshape(-1, 1), float("-inf")), dim=1)
    # Positives of (a, j): columns (b, offset + j) for b != a.
    lp = log_prob.view(v, n, v, world * n)[..., offset : offset + n]  # (V, N, V, N)
    lp = torch.diagonal(lp, dim1=1, dim2=3)  # (V_anchor, V_key, N)
    # Integer (not boolean) indexing: no device-to-host sync on CUDA.
    a_idx, b_idx = zip(*[(a, b) for a in range(v) for b in range(v) if a != b])
    terms = -lp[torch.tensor(a_idx, device=z.device), torch.tensor(b_idx, device=z.device)]  # (V(V-1), N)
    return terms.mean(0) if per_sample else terms.mean()


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
    _check_positive("epsilon", epsilon)
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
    _check_positive("temperature", temperature)
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
