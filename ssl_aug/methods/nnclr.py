"""NNCLR: contrastive learning with the support-set nearest neighbour of an embedding as its positive."""

from __future__ import annotations

import torch
import torch.nn as nn

from ssl_aug.losses.nnclr import nearest_neighbours, nnclr_loss
from ssl_aug.methods.base import Method, check_views, encode_views, register_method, require
from ssl_aug.methods.queue import EmbeddingQueue
from ssl_aug.models.heads import ProjectionHead

__all__ = ["NNCLR"]


@register_method("nnclr")
class NNCLR(Method):
    """NNCLR (Dwibedi, Aytar, Tompson, Sermanet & Zisserman 2021).

    forward(views: 2 batches (N, 3, H, W), step, epoch) -> (loss, stats). z_v = projector(backbone(x_v)),
    p_v = predictor(z_v); NN_v = the nearest neighbour of z_v in the support set (a per-rank queue of
    ``support_size`` earlier embeddings, no gradient); loss = (nnclr_loss(NN_1, p_2) + nnclr_loss(NN_2, p_1))
    / 2 (:func:`ssl_aug.losses.nnclr_loss`, temperature ``temperature``). In training mode view 1's z are
    then pushed into the support set. The support set starts as random unit vectors and fills after
    ``support_size / batch`` steps. Exported: ``backbone``; heads: projector, predictor; the support set
    is training state. stats: loss, nn_sim (mean cosine between z and its neighbour).
    """

    heads = ("projector", "predictor")
    rank_local_buffers = True

    def __init__(
        self,
        backbone: nn.Module,
        proj_hidden_dim: int = 2048,
        proj_dim: int = 256,
        pred_hidden_dim: int = 4096,
        proj_layers: int = 3,
        support_size: int = 98304,
        temperature: float = 0.1,
    ):
        super().__init__()
        for key, value in (("proj_hidden_dim", proj_hidden_dim), ("proj_dim", proj_dim),
                           ("pred_hidden_dim", pred_hidden_dim), ("proj_layers", proj_layers)):
            require(isinstance(value, int) and value >= 1, key, value, "use an integer >= 1")
        require(temperature > 0, "temperature", temperature, "use a number > 0 (NNCLR: 0.1)")
        self.backbone = backbone
        self.projector = ProjectionHead(backbone.feature_dim, proj_hidden_dim, proj_dim, proj_layers)
        self.predictor = ProjectionHead(proj_dim, pred_hidden_dim, proj_dim, 2)
        self.support = EmbeddingQueue(support_size, proj_dim, name="support_size")
        self.temperature = float(temperature)

    def forward(self, views, step: int = 0, epoch: int = 0):
        n = check_views(views)
        require(len(views) == 2, "number of views", len(views), "NNCLR uses exactly 2 views (augment.views = 2)")
        z = self.projector(encode_views(self.backbone, views))
        p = self.predictor(z).view(2, n, -1)
        z = z.view(2, n, -1)
        support = self.support.queue
        nn1, nn2 = nearest_neighbours(z[0], support), nearest_neighbours(z[1], support)
        loss = (nnclr_loss(nn1, p[1], self.temperature) + nnclr_loss(nn2, p[0], self.temperature)) / 2
        with torch.no_grad():
            nn_sim = torch.nn.functional.cosine_similarity(z[0].detach().float(), nn1.float(), dim=-1).mean()
        if self.training:
            self.support.push_(z[0].detach())
        return loss, {"loss": loss.detach(), "nn_sim": nn_sim}
