"""BYOL: online backbone + projector + predictor regress an EMA target network's projections."""

from __future__ import annotations

import torch
import torch.nn as nn

from ssl_aug.losses.byol import byol_loss
from ssl_aug.losses.imix import imix_byol_loss
from ssl_aug.methods.base import (Method, check_views, encode_views, preserved_norm_buffers, register_method,
                                  require)
from ssl_aug.methods.ema import cosine_momentum, ema_update_, frozen_copy
from ssl_aug.methods.imix import MixedViews
from ssl_aug.models.heads import ProjectionHead

__all__ = ["BYOL", "target_momentum"]

target_momentum = cosine_momentum  # BYOL's schedule: 0.996 at the first update, rising to 1 by cosine


@register_method("byol")
class BYOL(MixedViews, Method):
    """BYOL (Grill et al. 2020).

    forward(views: V >= 2 batches (N, 3, H, W), step, epoch) -> (loss, stats). Online:
    q_v = predictor(projector(backbone(x_v))); target (no gradient, EMA copies of backbone and projector,
    run in the same train/eval mode): z'_v = target_projector(target_backbone(x_v)); loss =
    :func:`ssl_aug.losses.byol_loss` (every view predicts every other view's target). After each optimiser
    step the target moves towards the online weights with momentum :func:`target_momentum` (0.996 -> 1 by
    cosine over the run). Exported: ``backbone`` (online); heads: projector, predictor; the target network
    is training state only. stats: loss, cos (mean online-target cosine of the pairs), momentum.
    Use the asymmetric views of the ``byol_asymmetric`` preset (blur p 1.0 / 0.1, solarize p 0 / 0.2).
    ``mix = {mode, alpha, p}`` turns on i-Mix (Lee et al. 2021) in training mode: view 0 is mixed within the
    batch (as SimCLR's i-Mix, seeded from (seed, step, rank)) and its prediction regresses the same mix of
    the other view's targets (:func:`ssl_aug.losses.imix_byol_loss`); two views only.
    """

    heads = ("projector", "predictor")

    def __init__(
        self,
        backbone: nn.Module,
        proj_hidden_dim: int = 2048,
        proj_dim: int = 256,
        pred_hidden_dim: int = 2048,
        base_momentum: float = 0.996,
        final_momentum: float = 1.0,
        proj_layers: int = 2,
        mix: dict | None = None,
    ):
        super().__init__()
        require(proj_hidden_dim >= 1, "proj_hidden_dim", proj_hidden_dim, "use an integer >= 1")
        require(proj_dim >= 1, "proj_dim", proj_dim, "use an integer >= 1")
        require(pred_hidden_dim >= 1, "pred_hidden_dim", pred_hidden_dim, "use an integer >= 1")
        require(0.0 <= base_momentum <= final_momentum <= 1.0, "base_momentum", (base_momentum, final_momentum),
                "use 0 <= base_momentum <= final_momentum <= 1 (BYOL: 0.996 -> 1.0)")
        self.backbone = backbone
        self.projector = ProjectionHead(backbone.feature_dim, proj_hidden_dim, proj_dim, proj_layers)
        self.predictor = ProjectionHead(proj_dim, pred_hidden_dim, proj_dim, 2)
        self.target_backbone = frozen_copy(backbone)
        self.target_projector = frozen_copy(self.projector)
        self.base_momentum, self.final_momentum = float(base_momentum), float(final_momentum)
        self.register_buffer("momentum", torch.tensor(self.base_momentum, dtype=torch.float64))
        self.init_mix(mix)

    def _target_parameters(self):
        return [*self.target_backbone.parameters(), *self.target_projector.parameters()]

    def _online_parameters(self):
        return [*self.backbone.parameters(), *self.projector.parameters()]

    def _embed(self, views) -> tuple[torch.Tensor, torch.Tensor]:
        """(online predictions q, target projections z') as (V, N, D) each."""
        n = check_views(views)
        q = self.predictor(self.projector(encode_views(self.backbone, views))).view(len(views), n, -1)
        with torch.no_grad():
            z = self.target_projector(encode_views(self.target_backbone, views)).view(len(views), n, -1)
        return q, z

    def forward(self, views, step: int = 0, epoch: int = 0):
        if self.mixing:
            return self._imix_forward(views, step)
        q, z = self._embed(views)
        loss = byol_loss(q, z)
        cos = 1.0 - loss.detach() / 4.0  # mean cosine of the V(V-1) online-target pairs
        return loss, {"loss": loss.detach(), "cos": cos, "momentum": self.momentum.detach().float()}

    def _imix_forward(self, views, step: int):
        check_views(views)
        mixed, lam, perm = self.mixed_view(views, step)
        q = self.predictor(self.projector(self.backbone(mixed)))
        with torch.no_grad():
            z = self.target_projector(self.target_backbone(views[1]))
        loss = imix_byol_loss(q, z, lam, perm)
        return loss, {"loss": loss.detach(), "cos": 1.0 - loss.detach() / 4.0,
                      "momentum": self.momentum.detach().float(), "mix_lam": lam.detach().float().mean()}

    @torch.no_grad()
    def per_image_loss(self, views) -> torch.Tensor:
        """BYOL loss of each image (N,) for this view set; no gradient, norm buffers of both networks kept."""
        with preserved_norm_buffers(self):
            q, z = self._embed(views)
            return byol_loss(q, z, reduction="none")

    @torch.no_grad()
    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        """EMA: target <- tau * target + (1 - tau) * online, tau = target_momentum(step - 1, total_steps)."""
        tau = target_momentum(step - 1, total_steps, self.base_momentum, self.final_momentum)
        ema_update_(self._target_parameters(), self._online_parameters(), tau)
        self.momentum.fill_(tau)

    def health_messages(self, stats: dict) -> list[str]:
        """Collapse warning: online predictions equal the targets (cos ~ 1) while the target barely moves
        is the normal end of training; a cosine of exactly 1 from the first steps means a constant output."""
        cos = float(stats["cos"])
        if cos > 0.999 and float(stats["momentum"]) < 0.999:
            return [f"BYOL online/target cosine {cos:.4f} ~ 1 early in training: the representation may have "
                    f"collapsed to a constant; check the predictor and the learning rate"]
        return []
