"""VICReg's loss (Bardes, Ponce & LeCun 2022): invariance + variance + covariance, as in the reference code.

Shapes: N images per rank, D embedding dim. Computed in float32 whatever the autocast dtype. With
``gather=True`` the embeddings of all ranks are gathered with gradient first (the reference
implementation's FullGatherLayer), so the statistics cover the global batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssl_aug import distributed as dist_utils
from ssl_aug.errors import SslAugError

__all__ = ["vicreg_loss", "variance_term", "covariance_term"]


def variance_term(z: torch.Tensor, gamma: float = 1.0, eps: float = 1e-4) -> torch.Tensor:
    """mean_d relu(gamma - sqrt(Var_n z[:, d] + eps)) for z (N, D) (unbiased variance). 0-d."""
    std = torch.sqrt(z.var(dim=0) + eps)
    return F.relu(gamma - std).mean()


def covariance_term(z: torch.Tensor) -> torch.Tensor:
    """sum_{i != j} C_ij^2 / D, C = (z - mean)^T (z - mean) / (N - 1) the (D, D) covariance of z (N, D). 0-d."""
    n, d = z.shape
    z = z - z.mean(dim=0)
    cov = (z.t() @ z) / (n - 1)
    return (cov.square().sum() - torch.diagonal(cov).square().sum()) / d


def vicreg_loss(z_a: torch.Tensor, z_b: torch.Tensor, sim_coeff: float = 25.0, std_coeff: float = 25.0,
                cov_coeff: float = 1.0, gamma: float = 1.0, gather: bool = False,
                return_terms: bool = False):
    """VICReg loss of two views z_a, z_b (N, D) (row i of both is one image):

        loss = sim_coeff * mean_{n,d} (z_a - z_b)^2
             + std_coeff * (variance_term(z_a) + variance_term(z_b)) / 2
             + cov_coeff * (covariance_term(z_a) + covariance_term(z_b))

    (lambda, mu, nu = 25, 25, 1 and gamma = 1 in the paper). Needs N >= 2 (global). ``return_terms``
    also returns {"invariance", "variance", "covariance"} (unweighted, detached). Returns a 0-d tensor.

    Example:
        >>> vicreg_loss(torch.randn(8, 4), torch.randn(8, 4)).shape
        torch.Size([])
    """
    if z_a.dim() != 2 or z_a.shape != z_b.shape:
        raise SslAugError(f"vicreg_loss got {tuple(z_a.shape)} and {tuple(z_b.shape)}: both must be (N, D)")
    with torch.autocast(z_a.device.type, enabled=False):
        z_a, z_b = z_a.float(), z_b.float()
        if gather and dist_utils.world_size() > 1:
            z_a, z_b = dist_utils.gather_with_grad(z_a), dist_utils.gather_with_grad(z_b)
        if z_a.shape[0] < 2:
            raise SslAugError(f"vicreg_loss needs at least 2 images in the batch, got {z_a.shape[0]}")
        invariance = F.mse_loss(z_a, z_b)
        variance = (variance_term(z_a, gamma) + variance_term(z_b, gamma)) / 2
        covariance = covariance_term(z_a) + covariance_term(z_b)
        loss = sim_coeff * invariance + std_coeff * variance + cov_coeff * covariance
    if return_terms:
        return loss, {"invariance": invariance.detach(), "variance": variance.detach(),
                      "covariance": covariance.detach()}
    return loss
