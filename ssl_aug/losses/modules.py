"""The losses as ``nn.Module`` objects (lightly's habit): hold the hyperparameters, call the functions.

Each module only stores its options and calls the function of the same family, so a module and its
function give identical values. Shapes as in the functions:

- `NTXentLoss(temperature=0.5, gather=False)`: ``loss(z_a, z_b)`` with (N, D) each, or ``loss(z_views)``
  with (V, N, D) / a list of V (N, D) (multi-view form) -> 0-d loss.
- `SwaVLoss(temperature=0.1, epsilon=0.05, iterations=3, crops_for_assign=(0, 1))`:
  ``loss(scores_per_crop, queue_scores=None)`` with C tensors (B, K) -> 0-d loss.
- `SinkhornKnopp(epsilon=0.05, iterations=3)`: ``codes = sk(scores)`` (B, K) -> (B, K) codes, no gradient.
- `BYOLLoss()`: ``loss(predictions, targets)`` with (V, N, D) each (or two lists of V (N, D)) -> 0-d loss.
- `IMixNTXentLoss(temperature=0.5)`: ``loss(z_mixed, z_other, lam, perm)`` with (N, D), (N, D), (N,), (N,).

Example:
    >>> criterion = NTXentLoss(temperature=0.5)
    >>> criterion(torch.randn(8, 16), torch.randn(8, 16)).shape
    torch.Size([])
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ssl_aug.losses._checks import check_positive
from ssl_aug.losses.byol import byol_loss
from ssl_aug.losses.imix import imix_nt_xent
from ssl_aug.losses.ntxent import nt_xent, nt_xent_multiview
from ssl_aug.losses.swav import sinkhorn, swav_loss

__all__ = ["NTXentLoss", "SwaVLoss", "SinkhornKnopp", "BYOLLoss", "IMixNTXentLoss"]


class NTXentLoss(nn.Module):
    """SimCLR's NT-Xent: ``forward(z_a, z_b)`` (N, D) each, or ``forward(z_views)`` (V, N, D) -> 0-d loss.

    `gather=True` gathers the embeddings of all ranks with gradient (negatives from the global batch).
    """

    def __init__(self, temperature: float = 0.5, gather: bool = False):
        super().__init__()
        check_positive("temperature", temperature)
        self.temperature, self.gather = float(temperature), bool(gather)

    def forward(self, z_a, z_b: torch.Tensor | None = None) -> torch.Tensor:
        if z_b is None:
            return nt_xent_multiview(z_a, self.temperature, self.gather)
        return nt_xent(z_a, z_b, self.temperature, self.gather)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, gather={self.gather}"


class SwaVLoss(nn.Module):
    """SwAV's swapped prediction: ``forward(scores_per_crop, queue_scores=None)``, C tensors (B, K) of
    prototype scores (global crops first) -> 0-d loss; codes by Sinkhorn-Knopp from `crops_for_assign`."""

    def __init__(self, temperature: float = 0.1, epsilon: float = 0.05, iterations: int = 3,
                 crops_for_assign: Sequence[int] = (0, 1)):
        super().__init__()
        check_positive("temperature", temperature)
        check_positive("epsilon", epsilon)
        self.temperature, self.epsilon, self.iterations = float(temperature), float(epsilon), int(iterations)
        self.crops_for_assign = tuple(crops_for_assign)

    def forward(self, scores_per_crop: Sequence[torch.Tensor],
                queue_scores: Sequence[torch.Tensor | None] | None = None) -> torch.Tensor:
        return swav_loss(scores_per_crop, self.temperature, self.epsilon, self.iterations, self.crops_for_assign,
                         queue_scores=queue_scores)

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature}, epsilon={self.epsilon}, iterations={self.iterations}, "
                f"crops_for_assign={self.crops_for_assign}")


class SinkhornKnopp(nn.Module):
    """Sinkhorn-Knopp codes: ``forward(scores)`` (B, K) -> (B, K) codes whose rows sum to 1 (no gradient)."""

    def __init__(self, epsilon: float = 0.05, iterations: int = 3):
        super().__init__()
        check_positive("epsilon", epsilon)
        self.epsilon, self.iterations = float(epsilon), int(iterations)

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        return sinkhorn(scores, self.epsilon, self.iterations)


class BYOLLoss(nn.Module):
    """BYOL's symmetrised normalised MSE: ``forward(predictions, targets)``, (V, N, D) each or lists of
    V (N, D) (online predictions, target projections; targets get no gradient) -> 0-d loss in [0, 8] for V=2."""

    def forward(self, predictions, targets) -> torch.Tensor:
        stack = (lambda t: torch.stack(list(t)) if isinstance(t, (list, tuple)) else t)
        return byol_loss(stack(predictions), stack(targets))


class IMixNTXentLoss(nn.Module):
    """i-Mix N-pair loss: ``forward(z_mixed, z_other, lam, perm)`` with (N, D), (N, D), (N,), (N,) -> 0-d."""

    def __init__(self, temperature: float = 0.5):
        super().__init__()
        check_positive("temperature", temperature)
        self.temperature = float(temperature)

    def forward(self, z_mixed, z_other, lam, perm) -> torch.Tensor:
        return imix_nt_xent(z_mixed, z_other, lam, perm, self.temperature)
