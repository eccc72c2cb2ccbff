"""i-Mix (Lee et al., ICLR 2021) for SimCLR: the contrastive loss with mixed virtual instance labels.

Every image of the batch is its own class. Anchor i is the embedding of the mixed input
x~_i = mix(x_i, x_perm(i)) with weight lam_i on its own content; its keys are the other (clean) view's
embeddings of all N images, and its target is lam_i * onehot(i) + (1 - lam_i) * onehot(perm(i)).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssl_aug.errors import SslAugError
from ssl_aug.losses._checks import check_positive

__all__ = ["imix_nt_xent", "imix_byol_loss"]


def imix_nt_xent(z_mixed: torch.Tensor, z_other: torch.Tensor, lam: torch.Tensor, perm: torch.Tensor,
                 temperature: float = 0.5) -> torch.Tensor:
    """i-Mix N-pair loss. z_mixed (N, D): embeddings of the mixed view; z_other (N, D): of the other view
    (row j = image j); lam (N,) own-content weights; perm (N,) partner indices. Normalised inside, in
    float32 or wider. With s_ij = cos(z~_i, z_j) / temperature (N x N):

        loss = 1/N sum_i -[ lam_i log softmax_j(s_i)_i + (1 - lam_i) log softmax_j(s_i)_perm(i) ]

    With lam = 1 it is the one-directional N-pair (InfoNCE) loss over the other view. Returns a 0-d tensor.

    Example: imix_nt_xent(torch.randn(8, 16), torch.randn(8, 16), torch.rand(8), torch.randperm(8))
    """
    check_positive("temperature", temperature)
    if z_mixed.dim() != 2 or z_mixed.shape != z_other.shape:
        raise SslAugError(f"imix_nt_xent embeddings have shapes {tuple(z_mixed.shape)} and {tuple(z_other.shape)}: "
                          "both must be (N, D)")
    n = z_mixed.shape[0]
    if lam.shape != (n,) or perm.shape != (n,):
        raise SslAugError(f"imix_nt_xent lam {tuple(lam.shape)} and perm {tuple(perm.shape)} must both be ({n},)")
    with torch.autocast(z_mixed.device.type, enabled=False):
        a, k = (z if z.dtype == torch.float64 else z.float() for z in (z_mixed, z_other))
        logits = F.normalize(a, dim=1) @ F.normalize(k, dim=1).t() / float(temperature)
        log_prob = torch.log_softmax(logits, dim=1)
        rows = torch.arange(n, device=logits.device)
        lam = lam.to(log_prob)
        terms = lam * log_prob[rows, rows] + (1 - lam) * log_prob[rows, perm.to(logits.device)]
        return -terms.mean()


def imix_byol_loss(q_mixed: torch.Tensor, z_other: torch.Tensor, lam: torch.Tensor,
                   perm: torch.Tensor) -> torch.Tensor:
    """i-Mix for BYOL: the online prediction of a mixed input regresses the same mix of the targets.

    q_mixed (N, D): online predictions for x~_i = mix(x_i, x_perm(i)); z_other (N, D): target projections
    of the other (clean) view, constants; lam (N,), perm (N,) as in :func:`imix_nt_xent`. With n(v) = v/|v|
    and t_i = n(lam_i n(z_i) + (1 - lam_i) n(z_perm(i))):

        loss = 2 * 1/N sum_i (2 - 2 cos(q_i, t_i))

    (the factor 2 keeps the range [0, 8] of the symmetrised BYOL loss; with lam = 1 it is twice BYOL's
    one-directional term). Returns a 0-d tensor, computed in float32 or wider.
    """
    if q_mixed.dim() != 2 or q_mixed.shape != z_other.shape:
        raise SslAugError(f"imix_byol_loss got {tuple(q_mixed.shape)} and {tuple(z_other.shape)}: both must be (N, D)")
    n = q_mixed.shape[0]
    if lam.shape != (n,) or perm.shape != (n,):
        raise SslAugError(f"imix_byol_loss lam {tuple(lam.shape)} and perm {tuple(perm.shape)} must both be ({n},)")
    with torch.autocast(q_mixed.device.type, enabled=False):
        q = F.normalize(q_mixed.float(), dim=1)
        z = F.normalize(z_other.detach().float(), dim=1)
        lam = lam.to(z)[:, None]
        target = F.normalize(lam * z + (1 - lam) * z[perm.to(z.device)], dim=1)
        return 2.0 * (2.0 - 2.0 * (q * target).sum(dim=1)).mean()
