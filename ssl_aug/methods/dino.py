"""DINO: a student matches the centred, sharpened output of an EMA teacher across multi-crop views."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from ssl_aug.errors import SslAugError
from ssl_aug.losses.dino import dino_loss, teacher_probabilities, updated_center
from ssl_aug.methods.base import Method, check_views, encode_views, register_method, require
from ssl_aug.methods.ema import ema_update_, frozen_copy
from ssl_aug.models.dino_head import DINOHead

__all__ = ["DINO"]


@register_method("dino")
class DINO(Method):
    """DINO (Caron et al. 2021), self-distillation with no labels.

    forward(views: C >= 2 crops (N, 3, H_c, W_c), the ``global_crops`` global crops first (augment.views),
    then any local crops (augment.multicrop), step, epoch) -> (loss, stats). Student: head(backbone(x)) on
    every crop (one backbone forward per resolution); teacher (``teacher_backbone`` + ``teacher_head``: EMA
    copies, no gradient) on the global crops only. loss = :func:`ssl_aug.losses.dino_loss` with the teacher
    centred by ``center`` and sharpened by ``teacher_temperature``, the student at ``student_temperature``.
    In training mode the centre then moves: center <- center_momentum * center + (1 - center_momentum) *
    mean teacher output over all ranks (one all-reduce).

    ``teacher_temperature`` and ``momentum`` are float attributes read at step time: the paper warms the
    teacher temperature up 0.04 -> 0.07 over 30 epochs and raises the momentum 0.996 -> 1 by cosine; give
    those recipe keys a schedule (see the shipped dino recipes; weight decay 0.04 -> 0.4 is
    train.weight_decay's schedule). ``freeze_last_layer_iters``: the head's last layer gets no update for
    that many steps (the paper: one epoch). Exported: ``backbone`` (the student); heads: head. stats:
    loss, teacher_entropy (mean entropy of the teacher distribution, nats; ln K = uniform collapse).
    """

    heads = ("head",)

    def __init__(
        self,
        backbone: nn.Module,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        head_layers: int = 3,
        norm_last_layer: bool = True,
        student_temperature: float = 0.1,
        teacher_temperature: float = 0.04,
        center_momentum: float = 0.9,
        momentum: float = 0.996,
        global_crops: int = 2,
        freeze_last_layer_iters: int = 0,
    ):
        super().__init__()
        for key, value in (("out_dim", out_dim), ("hidden_dim", hidden_dim), ("bottleneck_dim", bottleneck_dim),
                           ("head_layers", head_layers)):
            require(isinstance(value, int) and value >= 1, key, value, "use an integer >= 1")
        require(student_temperature > 0, "student_temperature", student_temperature, "use a number > 0 (DINO: 0.1)")
        require(teacher_temperature > 0, "teacher_temperature", teacher_temperature,
                "use a number > 0 (DINO: 0.04 warming up to 0.07)")
        require(0.0 <= center_momentum < 1.0, "center_momentum", center_momentum, "use a number in [0, 1) (DINO: 0.9)")
        require(isinstance(momentum, (int, float)) and 0.0 <= momentum < 1.0, "momentum", momentum,
                "use a number in [0, 1) (DINO: 0.996, rising to 1 by cosine)")
        require(isinstance(global_crops, int) and global_crops >= 1, "global_crops", global_crops,
                "use an integer >= 1 (DINO: 2)")
        require(isinstance(freeze_last_layer_iters, int) and freeze_last_layer_iters >= 0, "freeze_last_layer_iters",
                freeze_last_layer_iters, "use an integer >= 0 (DINO: one epoch of steps)")
        self.backbone = backbone
        self.head = DINOHead(backbone.feature_dim, out_dim, hidden_dim, bottleneck_dim, head_layers, norm_last_layer)
        self.teacher_backbone = frozen_copy(backbone)
        self.teacher_head = frozen_copy(self.head)
        self.register_buffer("center", torch.zeros(out_dim))
        self.student_temperature = float(student_temperature)
        self.teacher_temperature = float(teacher_temperature)
        self.center_momentum = float(center_momentum)
        self.momentum = float(momentum)
        self.global_crops = int(global_crops)
        self.freeze_last_layer_iters = int(freeze_last_layer_iters)

    def _check_crops(self, views) -> int:
        if isinstance(views, (list, tuple)) and len(views) < max(2, self.global_crops):
            raise SslAugError(f"DINO got {len(views)} crop(s): it needs at least {max(2, self.global_crops)} "
                              f"(global_crops = {self.global_crops} global crops, then local crops; set augment.views "
                              f">= 2, and augment.multicrop for local crops)")
        n = check_views(views)
        sizes = {tuple(v.shape[-2:]) for v in views[: self.global_crops]}
        if len(sizes) != 1:
            raise SslAugError(f"DINO's {self.global_crops} global crops have sizes {sorted(sizes)}: they must share "
                              f"one size (augment.size)")
        return n

    def forward(self, views, step: int = 0, epoch: int = 0):
        n = self._check_crops(views)
        student = self.head(encode_views(self.backbone, views)).view(len(views), n, -1)
        with torch.no_grad():
            teacher = self.teacher_head(self.teacher_backbone(torch.cat(list(views[: self.global_crops]))))
            teacher = teacher.view(self.global_crops, n, -1)
        loss = dino_loss(student, teacher, self.center, self.student_temperature, self.teacher_temperature)
        with torch.no_grad():
            p = teacher_probabilities(teacher, self.center, self.teacher_temperature)
            entropy = -(p * p.clamp_min(1e-12).log()).sum(dim=-1).mean()
            if self.training:
                self.center.copy_(updated_center(self.center, teacher, self.center_momentum))
        return loss, {"loss": loss.detach(), "teacher_entropy": entropy}

    def after_backward(self, step: int) -> None:
        """No update of the head's last layer while ``step < freeze_last_layer_iters``."""
        if step < self.freeze_last_layer_iters:
            self.head.last_layer.weight.grad = None
            self.head.last_g.grad = None

    @torch.no_grad()
    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        """teacher <- momentum * teacher + (1 - momentum) * student, for backbone and head."""
        ema_update_(self.teacher_backbone, self.backbone, self.momentum)
        ema_update_(self.teacher_head, self.head, self.momentum)

    def health_messages(self, stats: dict) -> list[str]:
        """Collapse warnings: a uniform teacher (entropy ~ ln K) or a one-hot teacher (entropy ~ 0)."""
        entropy, ln_k = float(stats["teacher_entropy"]), math.log(self.head.out_dim)
        if entropy > 0.98 * ln_k:
            return [f"DINO teacher entropy {entropy:.3f} ~ ln K = {ln_k:.3f}: the teacher output is uniform "
                    f"(collapse); lower teacher_temperature or raise center_momentum"]
        if entropy < 0.01:
            return [f"DINO teacher entropy {entropy:.4f} ~ 0: one output dimension dominates (collapse); "
                    f"check the centring (center_momentum) and the teacher temperature"]
        return []
