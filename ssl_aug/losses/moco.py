"""MoCo's InfoNCE with a queue of negatives (He et al. 2020; Chen et al. 2020, MoCo v2).

Shapes: N queries, D embedding dim, K queue entries. Computed in float32 whatever the autocast dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssl_aug.errors import SslAugError
from ssl_aug.losses._checks import check_positive

__all__ = ["moco_infonce"]


def moco_infonce(queries: torch.Tensor, keys: torch.Tensor, queue: torch.Tensor, temperature: float = 0.2,
                 reduction: str = "mean") -> torch.Tensor:
    """InfoNCE of each query against its own key (the positive) and the queue (the negatives).

    queries: (N, D) from the query encoder; keys: (N, D) from the key encoder (treated as constants);
    queue: (K, D) earlier keys. All are L2-normalised inside. With l_pos[n] = q_n . k_n and
    l_neg[n, j] = q_n . queue_j,

        loss = mean_n -log( exp(l_pos[n] / t) / (exp(l_pos[n] / t) + sum_j exp(l_neg[n, j] / t)) )

    i.e. a (K + 1)-way cross-entropy with the positive at index 0, as the reference code.
    ``reduction="none"`` returns the (N,) terms.

    Example:
        >>> moco_infonce(torch.randn(4, 8), torch.randn(4, 8), torch.randn(16, 8)).shape
        torch.Size([])
    """
    check_positive("temperature", temperature)
    if queries.dim() != 2 or queries.shape != keys.shape or queue.dim() != 2 or queue.shape[1] != queries.shape[1]:
        raise SslAugError(f"moco_infonce got queries {tuple(queries.shape)}, keys {tuple(keys.shape)}, queue "
                          f"{tuple(queue.shape)}: use (N, D), (N, D) and (K, D)")
    with torch.autocast(queries.device.type, enabled=False):
        q = F.normalize(queries.float(), dim=1)
        k = F.normalize(keys.detach().float(), dim=1)
        negatives = F.normalize(queue.detach().float(), dim=1)
        logits = torch.cat([(q * k).sum(dim=1, keepdim=True), q @ negatives.t()], dim=1) / temperature
        terms = torch.logsumexp(logits, dim=1) - logits[:, 0]
    return terms.mean() if reduction == "mean" else terms
