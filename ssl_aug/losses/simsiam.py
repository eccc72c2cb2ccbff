"""SimSiam's loss (Chen & He 2021): negative cosine between predictions and stop-gradient projections.

Shapes: V views, N images, D embedding dim. Computed in float32 whatever the autocast dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssl_aug.errors import SslAugError

__all__ = ["simsiam_loss"]


def simsiam_loss(predictions: torch.Tensor, projections: torch.Tensor) -> torch.Tensor:
    """Symmetrised negative cosine over every ordered pair of views, stop-gradient on the projections.

    predictions: (V, N, D) predictor outputs p_v; projections: (V, N, D) projector outputs z_v (detached
    inside: no gradient flows into them). With D(p, z) = -cos(p, z),

        loss = 1 / (V (V - 1)) * sum_{a != b} mean_n D(p_a[n], z_b[n])

    which for V = 2 is the paper's D(p_1, z_2) / 2 + D(p_2, z_1) / 2 (range [-1, 1]; -1 at perfect
    agreement). Returns a 0-d tensor.

    Example:
        >>> simsiam_loss(torch.randn(2, 4, 8), torch.randn(2, 4, 8)).shape
        torch.Size([])
    """
    if predictions.dim() != 3 or predictions.shape != projections.shape or predictions.shape[0] < 2:
        raise SslAugError(f"simsiam_loss got predictions {tuple(predictions.shape)} and projections "
                          f"{tuple(projections.shape)}: both must be (V, N, D) with V >= 2")
    v = predictions.shape[0]
    with torch.autocast(predictions.device.type, enabled=False):
        p = F.normalize(predictions.float(), dim=-1)
        z = F.normalize(projections.detach().float(), dim=-1)
        cos = torch.einsum("and,bnd->abn", p, z).mean(dim=2)  # (V_pred, V_proj)
        off_diagonal = cos.sum() - torch.diagonal(cos).sum()
        return -off_diagonal / (v * (v - 1))
