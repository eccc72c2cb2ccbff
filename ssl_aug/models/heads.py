"""Projection heads and SwAV's L2-normalised prototypes, reusable outside the methods.

`ProjectionHead` is the general MLP; the named heads carry the published defaults (shapes (N, in) -> (N, out)):

| head | layers | defaults |
|---|---|---|
| `SimCLRProjectionHead` | Linear-BN-ReLU-Linear | 2048 -> 2048 -> 128 (SimCLR) |
| `SwaVProjectionHead` | Linear-BN-ReLU-Linear | 2048 -> 2048 -> 128 (SwAV) |
| `BYOLProjectionHead` | Linear-BN-ReLU-Linear | 2048 -> 4096 -> 256 (BYOL) |
| `BYOLPredictionHead` | Linear-BN-ReLU-Linear | 256 -> 4096 -> 256 (BYOL) |
| `Prototypes` | L2-normalised bias-free Linear | dim -> K scores (SwAV) |

Example:
    >>> head = SimCLRProjectionHead(512, 512, 128)
    >>> head(torch.randn(4, 512)).shape
    torch.Size([4, 128])
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ssl_aug.errors import SslAugError

__all__ = ["ProjectionHead", "SimCLRProjectionHead", "SwaVProjectionHead", "BYOLProjectionHead",
           "BYOLPredictionHead", "Prototypes"]


class ProjectionHead(nn.Sequential):
    """MLP (N, in_dim) -> (N, out_dim): ``num_layers - 1`` blocks Linear-[BN]-ReLU, then a Linear.

    num_layers=2, batch_norm=True is SimCLR's head (Linear-BN-ReLU-Linear) and SwAV's MLP;
    num_layers=1 is a single linear map. Linear layers followed by BN carry no bias.
    """

    def __init__(
        self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 2, batch_norm: bool = True
    ):
        if num_layers < 1:
            raise SslAugError(f"projection num_layers={num_layers!r} is not allowed: use an integer >= 1")
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(num_layers - 1):
            layers.append(nn.Linear(dim, hidden_dim, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.ReLU(inplace=True))
            dim = hidden_dim
        layers.append(nn.Linear(dim, out_dim))
        super().__init__(*layers)
        self.in_dim, self.out_dim = in_dim, out_dim


class SimCLRProjectionHead(ProjectionHead):
    """SimCLR's projection head: (N, in_dim) -> (N, out_dim), Linear-BN-ReLU-Linear (num_layers=2).

    Defaults 2048 -> 2048 -> 128 (ResNet-50); on CIFAR ResNet-18 use in_dim=512."""

    def __init__(self, in_dim: int = 2048, hidden_dim: int = 2048, out_dim: int = 128, num_layers: int = 2):
        super().__init__(in_dim, hidden_dim, out_dim, num_layers, batch_norm=True)


class SwaVProjectionHead(ProjectionHead):
    """SwAV's projection MLP: (N, in_dim) -> (N, out_dim), Linear-BN-ReLU-Linear; defaults 2048 -> 2048 -> 128.
    Follow it with `Prototypes(out_dim, K)` on the L2-normalised output."""

    def __init__(self, in_dim: int = 2048, hidden_dim: int = 2048, out_dim: int = 128):
        super().__init__(in_dim, hidden_dim, out_dim, 2, batch_norm=True)


class BYOLProjectionHead(ProjectionHead):
    """BYOL's projector: (N, in_dim) -> (N, out_dim), Linear-BN-ReLU-Linear; defaults 2048 -> 4096 -> 256
    (CIFAR settings often 512 -> 2048 -> 256 or 512 -> 512 -> 128)."""

    def __init__(self, in_dim: int = 2048, hidden_dim: int = 4096, out_dim: int = 256):
        super().__init__(in_dim, hidden_dim, out_dim, 2, batch_norm=True)


class BYOLPredictionHead(ProjectionHead):
    """BYOL's predictor: (N, in_dim) -> (N, out_dim), Linear-BN-ReLU-Linear on the projector's output;
    defaults 256 -> 4096 -> 256."""

    def __init__(self, in_dim: int = 256, hidden_dim: int = 4096, out_dim: int = 256):
        super().__init__(in_dim, hidden_dim, out_dim, 2, batch_norm=True)


class Prototypes(nn.Linear):
    """K prototype vectors as a bias-free linear layer: (N, dim) -> scores (N, K) = z @ C^T.

    Rows of ``weight`` (K, dim) are L2-normalised at construction and by :meth:`normalize_`
    (SwAV calls it before every training forward); the state_dict key is ``weight`` as in
    facebookresearch/swav. ``freeze_iters``: :meth:`drop_grad_if_frozen` sets the gradient to None
    while ``step < freeze_iters``, so the optimiser (momentum and weight decay included) leaves the
    prototypes untouched, as in SwAV's first epoch.
    """

    def __init__(self, dim: int, num_prototypes: int, freeze_iters: int = 0):
        if num_prototypes < 1:
            raise SslAugError(f"num_prototypes={num_prototypes!r} is not allowed: use an integer >= 1")
        super().__init__(dim, num_prototypes, bias=False)
        self.freeze_iters = int(freeze_iters)
        self.normalize_()

    @property
    def num_prototypes(self) -> int:
        return self.out_features

    @torch.no_grad()
    def normalize_(self) -> None:
        """L2-normalise every prototype row in place (outside autograd)."""
        self.weight.copy_(F.normalize(self.weight, dim=1))

    def is_frozen(self, step: int) -> bool:
        return step < self.freeze_iters

    def drop_grad_if_frozen(self, step: int) -> None:
        """Call after backward: while frozen, remove the prototypes' gradient (grad = None)."""
        if self.is_frozen(step):
            self.weight.grad = None
