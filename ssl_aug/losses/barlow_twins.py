"""Barlow Twins' loss (Zbontar et al. 2021): cross-correlation of standardised embeddings to identity.

Shapes: N images per rank, D embedding dim. Computed in float32 whatever the autocast dtype. With
``gather=True`` the embeddings of all ranks are gathered with gradient first, which equals the
reference code (BatchNorm over the global batch, cross-correlation all-reduced over ranks).
"""

from __future__ import annotations

import torch

from ssl_aug import distributed as dist_utils
from ssl_aug.errors import SslAugError

__all__ = ["barlow_twins_loss", "cross_correlation"]


def cross_correlation(z_a: torch.Tensor, z_b: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """(D, D) C = n(z_a)^T n(z_b) / N, n(z) = (z - mean) / sqrt(biased var + eps) per dimension
    (BatchNorm1d without affine in training mode, as the reference code)."""
    def standardise(z):
        return (z - z.mean(dim=0)) / torch.sqrt(z.var(dim=0, unbiased=False) + eps)

    return standardise(z_a).t() @ standardise(z_b) / z_a.shape[0]


def barlow_twins_loss(z_a: torch.Tensor, z_b: torch.Tensor, lambd: float = 5e-3, gather: bool = False,
                      return_terms: bool = False):
    """Barlow Twins loss of two views z_a, z_b (N, D):

        loss = sum_i (1 - C_ii)^2 + lambd * sum_{i != j} C_ij^2,   C = cross_correlation(z_a, z_b)

    (lambd = 5e-3 in the paper). Zero when the two views' standardised embeddings are identical and
    decorrelated. Needs N >= 2 (global). ``return_terms`` also returns {"on_diagonal", "off_diagonal"}
    (unweighted, detached). Returns a 0-d tensor.

    Example:
        >>> barlow_twins_loss(torch.randn(8, 4), torch.randn(8, 4)).shape
        torch.Size([])
    """
    if z_a.dim() != 2 or z_a.shape != z_b.shape:
        raise SslAugError(f"barlow_twins_loss got {tuple(z_a.shape)} and {tuple(z_b.shape)}: both must be (N, D)")
    if not lambd > 0:
        raise SslAugError(f"lambd={lambd!r} is not allowed: use a number > 0 (Barlow Twins: 5e-3)")
    with torch.autocast(z_a.device.type, enabled=False):
        z_a, z_b = z_a.float(), z_b.float()
        if gather and dist_utils.world_size() > 1:
            z_a, z_b = dist_utils.gather_with_grad(z_a), dist_utils.gather_with_grad(z_b)
        if z_a.shape[0] < 2:
            raise SslAugError(f"barlow_twins_loss needs at least 2 images in the batch, got {z_a.shape[0]}")
        c = cross_correlation(z_a, z_b)
        diagonal = torch.diagonal(c)
        on = (1 - diagonal).square().sum()
        off = c.square().sum() - diagonal.square().sum()
        loss = on + lambd * off
    if return_terms:
        return loss, {"on_diagonal": on.detach(), "off_diagonal": off.detach()}
    return loss
