"""BYOL's regression loss (Grill et al. 2020): normalised-MSE between online predictions and target
projections, symmetrised over every ordered pair of views.

Shapes: V views, N images, D embedding dim. Computed in float32 whatever the autocast dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssl_aug.errors import SslAugError

__all__ = ["byol_loss"]


def byol_loss(predictions: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """BYOL loss over V >= 2 views.

    predictions: (V, N, D) online predictor outputs q_v; targets: (V, N, D) target projections z'_v
    (treated as constants: no gradient flows into them). With l(q, z) = 2 - 2 cos(q, z) =
    || q/|q| - z/|z| ||^2,

        loss = 2 / (V (V - 1)) * sum_{a != b} mean_n l(q_a[n], z'_b[n])

    which for V = 2 is the paper's symmetrised l(q_1, z'_2) + l(q_2, z'_1) (range [0, 8]).
    ``reduction="none"`` returns the (N,) per-image terms (their mean is the loss).

    Example:
        >>> q, z = torch.randn(2, 4, 8), torch.randn(2, 4, 8)
        >>> byol_loss(q, z).shape
        torch.Size([])
    """
    if reduction not in ("mean", "none"):
        raise SslAugError(f"byol_loss reduction={reduction!r} is not allowed; use 'mean' or 'none'")
    if predictions.dim() != 3 or predictions.shape != targets.shape or predictions.shape[0] < 2:
        raise SslAugError(f"byol_loss got predictions {tuple(predictions.shape)} and targets "
                          f"{tuple(targets.shape)}: both must be (V, N, D) with V >= 2")
    v = predictions.shape[0]
    with torch.autocast(predictions.device.type, enabled=False):
        q = F.normalize(predictions.float(), dim=-1)
        z = F.normalize(targets.detach().float(), dim=-1)
        cos = torch.einsum("and,bnd->abn", q, z)  # (V_online, V_target, N)
        off_diagonal = cos.sum(dim=(0, 1)) - torch.diagonal(cos, dim1=0, dim2=1).sum(dim=1)  # (N,)
        per_image = 2.0 * (2.0 - 2.0 * off_diagonal / (v * (v - 1)))
    return per_image.mean() if reduction == "mean" else per_image
