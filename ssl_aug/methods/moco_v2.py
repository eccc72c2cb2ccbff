"""MoCo v2: query encoder + momentum key encoder + a queue of negatives, InfoNCE (temperature 0.2)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ssl_aug import distributed as dist_utils
from ssl_aug.errors import SslAugError
from ssl_aug.losses.moco import moco_infonce
from ssl_aug.methods.base import Method, check_views, encode_views, register_method, require
from ssl_aug.methods.ema import ema_update_, frozen_copy
from ssl_aug.methods.queue import EmbeddingQueue
from ssl_aug.models.heads import ProjectionHead

__all__ = ["MoCoV2", "has_cross_rank_batchnorm"]


def has_cross_rank_batchnorm(module: nn.Module) -> bool:
    """True when every BatchNorm of ``module`` normalises over all ranks (SyncBatchNorm / GroupBatchNorm),
    or when it has no BatchNorm."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    return all(isinstance(m, (nn.SyncBatchNorm, dist_utils.GroupBatchNorm)) for m in norms)


@register_method("moco_v2")
class MoCoV2(Method):
    """MoCo v2 (He et al. 2020; Chen, Fan, Girshick & He 2020).

    forward(views: 2 batches (N, 3, H, W), step, epoch) -> (loss, stats). Queries q_v = projector(backbone(x_v))
    (MLP head without BatchNorm, as MoCo v2); keys k_v from the key encoder (``key_backbone`` +
    ``key_projector``: EMA copies, no gradient). loss = :func:`ssl_aug.losses.moco_infonce` of q_1 against
    k_2 and the queue; ``symmetric``: the mean of (q_1, k_2) and (q_2, k_1) (solo-learn's MoCo v2+). Then
    this batch's keys are pushed into the queue (training mode only). After every optimiser step the key
    encoder moves by ``momentum`` (a float attribute read at step time).

    Several ranks: each rank keeps a queue of ``queue_length // world_size`` of its own keys (no
    communication; ``rank_local_buffers``), and BatchNorm must be synchronised across ranks (recipe
    ``model.sync_batchnorm = true``), which removes the batch-statistics shortcut that shuffle-BN removes
    in the reference code. Exported: ``backbone`` (the query encoder); heads: projector. stats: loss,
    pos_sim (mean query-key cosine), neg_sim (mean query-queue cosine).
    """

    heads = ("projector",)
    rank_local_buffers = True

    def __init__(
        self,
        backbone: nn.Module,
        proj_hidden_dim: int = 2048,
        proj_dim: int = 128,
        proj_layers: int = 2,
        queue_length: int = 65536,
        temperature: float = 0.2,
        momentum: float = 0.999,
        symmetric: bool = False,
    ):
        super().__init__()
        for key, value in (("proj_hidden_dim", proj_hidden_dim), ("proj_dim", proj_dim), ("proj_layers", proj_layers)):
            require(isinstance(value, int) and value >= 1, key, value, "use an integer >= 1")
        require(temperature > 0, "temperature", temperature, "use a number > 0 (MoCo v2: 0.2)")
        require(isinstance(momentum, (int, float)) and 0.0 <= momentum < 1.0, "momentum", momentum,
                "use a number in [0, 1) (MoCo: 0.999 ImageNet, 0.99 CIFAR)")
        self.backbone = backbone
        self.projector = ProjectionHead(backbone.feature_dim, proj_hidden_dim, proj_dim, proj_layers,
                                        batch_norm=False)
        self.key_backbone = frozen_copy(backbone)
        self.key_projector = frozen_copy(self.projector)
        self.queue = EmbeddingQueue(queue_length, proj_dim, name="queue_length")
        self.temperature, self.momentum, self.symmetric = float(temperature), float(momentum), bool(symmetric)
        self._bn_checked = False

    def _check_batchnorm(self) -> None:
        """Once, on several ranks: refuse per-rank BatchNorm (it lets keys and queries share batch statistics)."""
        if self._bn_checked or dist_utils.world_size() < 2:
            return
        if not has_cross_rank_batchnorm(self):
            raise SslAugError(f"method {self.name!r} on {dist_utils.world_size()} ranks needs model.sync_batchnorm = "
                              f"true (allowed: true; per-rank BatchNorm leaks the positive through batch statistics)")
        self._bn_checked = True

    def forward(self, views, step: int = 0, epoch: int = 0):
        n = check_views(views)
        require(len(views) == 2, "number of views", len(views), "MoCo uses exactly 2 views (augment.views = 2)")
        if self.training:
            self._check_batchnorm()
        q = self.projector(encode_views(self.backbone, views)).view(2, n, -1)
        with torch.no_grad():
            k = self.key_projector(encode_views(self.key_backbone, views)).view(2, n, -1)
        queue = self.queue.queue.clone()  # negatives as they were before this batch
        if self.symmetric:
            loss = (moco_infonce(q[0], k[1], queue, self.temperature)
                    + moco_infonce(q[1], k[0], queue, self.temperature)) / 2
        else:
            loss = moco_infonce(q[0], k[1], queue, self.temperature)
        if self.training:
            self.queue.push_(k.flatten(0, 1) if self.symmetric else k[1])
        with torch.no_grad():
            qn, kn = F.normalize(q.detach().float(), dim=-1), F.normalize(k.float(), dim=-1)
            pos = (qn * kn.flip(0)).sum(-1).mean()
            neg = (qn.flatten(0, 1) @ queue.float().t()).mean()
        return loss, {"loss": loss.detach(), "pos_sim": pos, "neg_sim": neg}

    @torch.no_grad()
    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        """key <- momentum * key + (1 - momentum) * query, for backbone and projector."""
        ema_update_(self.key_backbone, self.backbone, self.momentum)
        ema_update_(self.key_projector, self.projector, self.momentum)
