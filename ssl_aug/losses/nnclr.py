"""NNCLR's loss (Dwibedi et al. 2021): a support-set nearest neighbour of the embedding is the positive.

Shapes: N images, D embedding dim, K support entries. Computed in float32 whatever the autocast dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssl_aug.errors import SslAugError
from ssl_aug.losses._checks import check_positive

__all__ = ["nearest_neighbours", "nnclr_loss"]


@torch.no_grad()
def nearest_neighbours(z: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """For each row of z (N, D), the support row (of support (K, D)) with the largest cosine similarity.
    Returns (N, D) rows of ``support`` (no gradient)."""
    sim = F.normalize(z.float(), dim=1) @ F.normalize(support.float(), dim=1).t()
    return support[sim.argmax(dim=1)]


def nnclr_loss(neighbours: torch.Tensor, predictions: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """One direction of NNCLR's loss: mean_n CE(NN_n . P^T / t, n).

    neighbours: (N, D) support-set nearest neighbours of view 1's embeddings (constants); predictions:
    (N, D) predictor outputs of view 2 (row n: the same image). Both L2-normalised inside; the other
    images' predictions are the negatives. The method averages both directions.

    Example:
        >>> nnclr_loss(torch.randn(4, 8), torch.randn(4, 8)).shape
        torch.Size([])
    """
    check_positive("temperature", temperature)
    if neighbours.dim() != 2 or neighbours.shape != predictions.shape:
        raise SslAugError(f"nnclr_loss got {tuple(neighbours.shape)} and {tuple(predictions.shape)}: "
                          f"both must be (N, D)")
    with torch.autocast(predictions.device.type, enabled=False):
        a = F.normalize(neighbours.detach().float(), dim=1)
        p = F.normalize(predictions.float(), dim=1)
        logits = a @ p.t() / temperature
        return F.cross_entropy(logits, torch.arange(a.shape[0], device=a.device))
