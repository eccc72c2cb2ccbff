"""MoCo v3: query encoder + predictor against a momentum key encoder, symmetric, no queue."""

from __future__ import annotations

import torch
import torch.nn as nn

from ssl_aug import distributed as dist_utils
from ssl_aug.losses.moco_v3 import moco_v3_loss
from ssl_aug.methods.base import Method, check_views, encode_views, register_method, require
from ssl_aug.methods.ema import ema_update_, frozen_copy
from ssl_aug.models.heads import ProjectionHead

__all__ = ["MoCoV3"]


@register_method("moco_v3")
class MoCoV3(Method):
    """MoCo v3 (Chen, Xie & He 2021), ResNet form.

    forward(views: 2 batches (N, 3, H, W), step, epoch) -> (loss, stats). q_v = predictor(projector(backbone(x_v)));
    k_v = key_projector(key_backbone(x_v)) (EMA copies, no gradient). Projector: ``proj_layers`` Linear-BN-ReLU
    blocks, a Linear and BatchNorm without affine; predictor: Linear-BN-ReLU-Linear (the reference code's
    MLPs). loss = moco_v3_loss(q_1, k_2) + moco_v3_loss(q_2, k_1) (:func:`ssl_aug.losses.moco_v3_loss`; the
    keys of all ranks are the negatives when ``gather``). No queue. After every optimiser step the key
    encoder moves by ``momentum`` (a float attribute read at step time; the paper raises it from 0.99 to 1
    by cosine: give the recipe key a schedule). Exported: ``backbone``; heads: projector, predictor.
    stats: loss, pos_sim (mean query-key cosine of the pairs).
    """

    heads = ("projector", "predictor")

    def __init__(
        self,
        backbone: nn.Module,
        proj_hidden_dim: int = 4096,
        proj_dim: int = 256,
        pred_hidden_dim: int = 4096,
        proj_layers: int = 2,
        temperature: float = 0.2,
        momentum: float = 0.99,
        gather: bool | None = None,
    ):
        super().__init__()
        for key, value in (("proj_hidden_dim", proj_hidden_dim), ("proj_dim", proj_dim),
                           ("pred_hidden_dim", pred_hidden_dim), ("proj_layers", proj_layers)):
            require(isinstance(value, int) and value >= 1, key, value, "use an integer >= 1")
        require(temperature > 0, "temperature", temperature, "use a number > 0 (MoCo v3: 0.2)")
        require(isinstance(momentum, (int, float)) and 0.0 <= momentum < 1.0, "momentum", momentum,
                "use a number in [0, 1) (MoCo v3: 0.99, rising to 1 by cosine)")
        self.backbone = backbone
        self.projector = nn.Sequential(ProjectionHead(backbone.feature_dim, proj_hidden_dim, proj_dim, proj_layers),
                                       nn.BatchNorm1d(proj_dim, affine=False))
        self.predictor = ProjectionHead(proj_dim, pred_hidden_dim, proj_dim, 2)
        self.key_backbone = frozen_copy(backbone)
        self.key_projector = frozen_copy(self.projector)
        self.temperature, self.momentum = float(temperature), float(momentum)
        self.gather = dist_utils.world_size() > 1 if gather is None else bool(gather)

    def forward(self, views, step: int = 0, epoch: int = 0):
        n = check_views(views)
        require(len(views) == 2, "number of views", len(views), "MoCo v3 uses exactly 2 views (augment.views = 2)")
        q = self.predictor(self.projector(encode_views(self.backbone, views))).view(2, n, -1)
        with torch.no_grad():
            k = self.key_projector(encode_views(self.key_backbone, views)).view(2, n, -1)
        loss = (moco_v3_loss(q[0], k[1], self.temperature, self.gather)
                + moco_v3_loss(q[1], k[0], self.temperature, self.gather))
        with torch.no_grad():
            pos = torch.nn.functional.cosine_similarity(q.detach().float(), k.flip(0).float(), dim=-1).mean()
        return loss, {"loss": loss.detach(), "pos_sim": pos}

    @torch.no_grad()
    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        """key <- momentum * key + (1 - momentum) * query, for backbone and projector."""
        ema_update_(self.key_backbone, self.backbone, self.momentum)
        ema_update_(self.key_projector, self.projector, self.momentum)
