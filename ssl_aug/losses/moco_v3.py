"""MoCo v3's contrastive loss (Chen, Xie & He 2021): queries against the keys of the whole batch.

Shapes: N images per rank, D embedding dim. Computed in float32 whatever the autocast dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssl_aug import distributed as dist_utils
from ssl_aug.errors import SslAugError
from ssl_aug.losses._checks import check_positive

__all__ = ["moco_v3_loss"]


def moco_v3_loss(queries: torch.Tensor, keys: torch.Tensor, temperature: float = 0.2,
                 gather: bool = False) -> torch.Tensor:
    """One direction of MoCo v3's loss: 2 t * mean_n CE(q_n . K^T / t, n), as the reference code.

    queries: (N, D) predictor outputs of one view; keys: (N, D) momentum-encoder outputs of the other
    view (constants). Both are L2-normalised inside. K holds the keys of this batch (with ``gather``: of
    every rank, this rank's rows at offset rank * N), so the other images' keys are the negatives. The
    factor 2 t is the reference code's scaling. The method sums both directions (symmetrised loss).

    Example:
        >>> moco_v3_loss(torch.randn(4, 8), torch.randn(4, 8)).shape
        torch.Size([])
    """
    check_positive("temperature", temperature)
    if queries.dim() != 2 or queries.shape != keys.shape:
        raise SslAugError(f"moco_v3_loss got queries {tuple(queries.shape)} and keys {tuple(keys.shape)}: "
                          f"both must be (N, D)")
    n = queries.shape[0]
    with torch.autocast(queries.device.type, enabled=False):
        q = F.normalize(queries.float(), dim=1)
        k = F.normalize(keys.detach().float(), dim=1)
        offset = 0
        if gather and dist_utils.world_size() > 1:
            k = dist_utils.gather_with_grad(k)
            offset = dist_utils.rank() * n
        logits = q @ k.t() / temperature
        labels = torch.arange(n, device=q.device) + offset
        return F.cross_entropy(logits, labels) * (2 * temperature)
