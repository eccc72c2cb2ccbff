"""NT-Xent (SimCLR): two-view, multi-view and per-image forms.

Shapes: N images per rank, V views, D embedding dim. Computed in float32 (or wider) whatever the
autocast dtype of the inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssl_aug import distributed as dist_utils
from ssl_aug.errors import SslAugError
from ssl_aug.losses._checks import check_positive

__all__ = ["nt_xent", "nt_xent_multiview", "nt_xent_per_sample"]


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
    check_positive("temperature", temperature)
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
    a_idx, b_idx = _pair_index(v, z.device)
    terms = -lp[a_idx, b_idx]  # (V(V-1), N)
    return terms.mean(0) if per_sample else terms.mean()


_PAIRS: dict = {}


def _pair_index(v: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(anchor view, key view) of the V(V-1) ordered pairs a != b, as two (V(V-1),) int64 tensors built on
    `device` once per (V, device) and cached: integer indexing with no host->device copy and no sync."""
    key = (v, str(device))
    if key not in _PAIRS:
        k = torch.arange(v * (v - 1), device=device)
        a = k // (v - 1)
        r = k % (v - 1)
        _PAIRS[key] = (a, r + (r >= a).long())  # b runs over 0..V-1 without a
    return _PAIRS[key]
