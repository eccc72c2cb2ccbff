"""SimSiam: backbone + projector + bottleneck predictor, negative cosine with a stop-gradient."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ssl_aug.losses.simsiam import simsiam_loss
from ssl_aug.methods.base import Method, check_views, encode_views, register_method, require
from ssl_aug.models.heads import ProjectionHead

__all__ = ["SimSiam"]


@register_method("simsiam")
class SimSiam(Method):
    """SimSiam (Chen & He 2021).

    forward(views: V >= 2 batches (N, 3, H, W), step, epoch) -> (loss, stats). z_v = projector(backbone(x_v))
    (an MLP of ``proj_layers`` Linear-BN-ReLU blocks ending in Linear + BatchNorm without affine, as the
    paper's projector), p_v = predictor(z_v) (Linear-BN-ReLU-Linear, hidden ``pred_hidden_dim``: the
    bottleneck, 512 for 2048-d z); loss = :func:`ssl_aug.losses.simsiam_loss` (z treated as constants).
    No target network, no negatives. Exported: ``backbone``; heads: projector, predictor.
    stats: loss, z_std (std of the unit-normalised z per dimension, averaged; 1/sqrt(D) when spread,
    0 when collapsed to a constant, the paper's collapse monitor).
    """

    heads = ("projector", "predictor")

    def __init__(
        self,
        backbone: nn.Module,
        proj_hidden_dim: int = 2048,
        proj_dim: int = 2048,
        pred_hidden_dim: int = 512,
        proj_layers: int = 3,
    ):
        super().__init__()
        for key, value in (("proj_hidden_dim", proj_hidden_dim), ("proj_dim", proj_dim),
                           ("pred_hidden_dim", pred_hidden_dim)):
            require(isinstance(value, int) and value >= 1, key, value, "use an integer >= 1")
        require(isinstance(proj_layers, int) and proj_layers >= 1, "proj_layers", proj_layers,
                "use an integer >= 1 (SimSiam: 3 ImageNet, 2 CIFAR)")
        self.backbone = backbone
        self.projector = nn.Sequential(ProjectionHead(backbone.feature_dim, proj_hidden_dim, proj_dim, proj_layers),
                                       nn.BatchNorm1d(proj_dim, affine=False))
        self.predictor = ProjectionHead(proj_dim, pred_hidden_dim, proj_dim, 2)
        self.proj_dim = proj_dim

    def forward(self, views, step: int = 0, epoch: int = 0):
        n = check_views(views)
        z = self.projector(encode_views(self.backbone, views))
        p = self.predictor(z)
        z, p = z.view(len(views), n, -1), p.view(len(views), n, -1)
        loss = simsiam_loss(p, z)
        with torch.no_grad():
            z_std = F.normalize(z.detach().float(), dim=-1).std(dim=1).mean()
        return loss, {"loss": loss.detach(), "z_std": z_std}

    def health_messages(self, stats: dict) -> list[str]:
        """Collapse warning: the normalised projections have (almost) no spread across the batch."""
        z_std, spread = float(stats["z_std"]), 1.0 / math.sqrt(self.proj_dim)
        if z_std < 0.1 * spread:
            return [f"SimSiam z_std {z_std:.4f} << 1/sqrt(D) = {spread:.4f}: the representation collapsed to a "
                    f"constant; check the predictor, the stop-gradient and the learning rate"]
        return []
