"""Barlow Twins: backbone + projector, cross-correlation of the two views' embeddings driven to identity."""

from __future__ import annotations

import torch.nn as nn

from ssl_aug import distributed as dist_utils
from ssl_aug.losses.barlow_twins import barlow_twins_loss
from ssl_aug.methods.base import Method, check_views, encode_views, register_method, require
from ssl_aug.models.heads import ProjectionHead

__all__ = ["BarlowTwins"]


@register_method("barlow_twins")
class BarlowTwins(Method):
    """Barlow Twins (Zbontar et al. 2021).

    forward(views: V >= 2 batches (N, 3, H, W), step, epoch) -> (loss, stats). z_v = projector(backbone(x_v))
    (``proj_layers`` Linear-BN-ReLU blocks then a Linear: 8192 x 3 in the paper, 2048 on CIFAR);
    loss = ``scale_loss`` x :func:`ssl_aug.losses.barlow_twins_loss` (off-diagonal weight ``lambd``),
    averaged over every unordered pair of views. ``gather`` (None: when more than one rank runs): the
    cross-correlation over the global batch, as the reference code. No target network. Exported:
    ``backbone``; heads: projector. stats: loss, on_diagonal, off_diagonal (unweighted sums).
    """

    def __init__(
        self,
        backbone: nn.Module,
        proj_hidden_dim: int = 8192,
        proj_dim: int = 8192,
        proj_layers: int = 3,
        lambd: float = 0.0051,
        scale_loss: float = 1.0,
        gather: bool | None = None,
    ):
        super().__init__()
        for key, value in (("proj_hidden_dim", proj_hidden_dim), ("proj_dim", proj_dim), ("proj_layers", proj_layers)):
            require(isinstance(value, int) and value >= 1, key, value, "use an integer >= 1")
        require(lambd > 0, "lambd", lambd, "use a number > 0 (Barlow Twins: 0.0051; about 1 / proj_dim)")
        require(scale_loss > 0, "scale_loss", scale_loss, "use a number > 0 (1.0; solo-learn CIFAR: 0.1)")
        self.backbone = backbone
        self.projector = ProjectionHead(backbone.feature_dim, proj_hidden_dim, proj_dim, proj_layers)
        self.lambd, self.scale_loss = float(lambd), float(scale_loss)
        self.gather = dist_utils.world_size() > 1 if gather is None else bool(gather)

    def forward(self, views, step: int = 0, epoch: int = 0):
        n = check_views(views)
        z = self.projector(encode_views(self.backbone, views)).view(len(views), n, -1)
        pairs = [(a, b) for a in range(len(views)) for b in range(a + 1, len(views))]
        total, terms = 0.0, {}
        for a, b in pairs:
            loss, parts = barlow_twins_loss(z[a], z[b], self.lambd, gather=self.gather, return_terms=True)
            total = total + self.scale_loss * loss / len(pairs)
            for k, v in parts.items():
                terms[k] = terms.get(k, 0.0) + v / len(pairs)
        return total, {"loss": total.detach(), **terms}
