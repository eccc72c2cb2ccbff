"""SwAV: backbone + MLP projector + L2-normalised prototypes + swapped prediction with Sinkhorn codes."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ssl_aug import distributed as dist_utils
from ssl_aug.errors import SslAugError
from ssl_aug.losses import swav_loss
from ssl_aug.methods.base import (Method, check_views, encode_views, preserved_norm_buffers, register_method,
                                  require)
from ssl_aug.models.heads import ProjectionHead, Prototypes

__all__ = ["SwAV"]


@register_method("swav")
class SwAV(Method):
    """SwAV (Caron et al. 2020), following facebookresearch/swav ``main_swav.py``.

    forward(views: C crops (N, 3, H_c, W_c), step, epoch) -> (loss, stats). One backbone forward per
    crop resolution, one projector forward for all crops, z = normalise(projector(features)),
    scores = prototypes(z) (N, K) per crop, loss = :func:`ssl_aug.losses.swav_loss`.
    In training mode the prototypes are L2-normalised at the start of every forward, and
    :meth:`after_backward` drops their gradient while ``step < freeze_prototypes_iters``.

    Queue (``queue_length`` > 0): from ``epoch >= queue_start_epoch`` the z of the assign crops of each
    training batch are pushed into the buffer ``queue`` (len(crops_for_assign), queue_length // world,
    proj_dim); once it is full, its scores against the current prototypes are prepended to the
    Sinkhorn input (codes are still taken for this batch only). ``queue`` and ``queue_count`` live in
    the state_dict, so a resumed run continues exactly. With DDP use ``broadcast_buffers=False`` so each
    rank keeps its own queue.

    stats (detached 0-d tensors): loss, code_entropy (mean entropy of the code rows, nats),
    code_max (mean max code probability), proto_usage (share of prototypes that are the top code of
    at least one image), collapse (1.0 when the loss is within 1% of ln K), queue_used (1.0/0.0).
    """

    heads = ("projector", "prototypes")

    def __init__(
        self,
        backbone: nn.Module,
        proj_hidden_dim: int = 2048,
        proj_dim: int = 128,
        num_prototypes: int = 3000,
        temperature: float = 0.1,
        epsilon: float = 0.05,
        sinkhorn_iterations: int = 3,
        crops_for_assign=(0, 1),
        freeze_prototypes_iters: int = 313,
        queue_length: int = 0,
        queue_start_epoch: int = 15,
        proj_layers: int = 2,
        sinkhorn_float64: bool = False,
    ):
        super().__init__()
        require(temperature > 0, "temperature", temperature, "use a number > 0 (SwAV: 0.1)")
        require(epsilon > 0, "epsilon", epsilon, "use a number > 0 (SwAV: 0.05, 0.03 against collapse)")
        require(sinkhorn_iterations >= 1, "sinkhorn_iterations", sinkhorn_iterations, "use an integer >= 1")
        require(num_prototypes >= 2, "num_prototypes", num_prototypes, "use an integer >= 2 (CIFAR 100-3000)")
        require(queue_length >= 0, "queue_length", queue_length, "use 0 (no queue) or a positive integer")
        crops = tuple(crops_for_assign)
        require(
            len(crops) >= 1
            and len(set(crops)) == len(crops)
            and all(isinstance(c, int) and c >= 0 for c in crops),
            "crops_for_assign", crops_for_assign, "use distinct non-negative crop indices, e.g. [0, 1]",
        )
        self.backbone = backbone
        self.projector = ProjectionHead(backbone.feature_dim, proj_hidden_dim, proj_dim, proj_layers)
        self.rank_local_buffers = bool(queue_length)
        self.prototypes = Prototypes(proj_dim, num_prototypes, freeze_iters=freeze_prototypes_iters)
        self.temperature, self.epsilon = float(temperature), float(epsilon)
        self.sinkhorn_iterations = int(sinkhorn_iterations)
        self.sinkhorn_dtype = torch.float64 if sinkhorn_float64 else torch.float32
        self.crops_for_assign = crops
        self.queue_start_epoch = int(queue_start_epoch)
        self.queue_length = int(queue_length) // dist_utils.world_size() if queue_length else 0
        if self.queue_length:
            self.register_buffer("queue", torch.zeros(len(crops), self.queue_length, proj_dim))
            self.register_buffer("queue_count", torch.zeros((), dtype=torch.long))
        self._queue_filled = 0  # host copy of queue_count: deciding to use the queue needs no sync
        self.register_load_state_dict_post_hook(SwAV._sync_queue_count)

    @staticmethod
    def _sync_queue_count(module: "SwAV", incompatible_keys) -> None:
        if module.queue_length:
            module._queue_filled = int(module.queue_count)

    def _check_crops(self, views) -> int:
        n = check_views(views)
        if max(self.crops_for_assign) >= len(views):
            raise SslAugError(
                f"crops_for_assign={self.crops_for_assign!r} is not allowed with {len(views)} crops: "
                f"use indices in 0..{len(views) - 1}"
            )
        return n

    def forward(self, views, step: int = 0, epoch: int = 0):
        n = self._check_crops(views)
        if self.training:
            self.prototypes.normalize_()
        z = F.normalize(self.projector(encode_views(self.backbone, views)), dim=1)  # (C*N, D)
        scores = self.prototypes(z).chunk(len(views))  # C x (N, K)
        queue_scores = self._queue_step(z.detach().view(len(views), n, -1), epoch)
        loss, codes = swav_loss(
            scores, self.temperature, self.epsilon, self.sinkhorn_iterations, self.crops_for_assign,
            queue_scores=queue_scores, sinkhorn_dtype=self.sinkhorn_dtype, return_codes=True,
        )
        # while the prototypes are frozen, near-uniform predictions are the start of training, not a collapse
        frozen = step < self.prototypes.freeze_iters
        return loss, self._stats(loss.detach(), torch.cat(codes), queue_scores is not None, frozen)

    @torch.no_grad()
    def _queue_step(self, z: torch.Tensor, epoch: int):
        """Scores of the queue before this batch (None until full), then push this batch's assign crops."""
        if not (self.queue_length and self.training and epoch >= self.queue_start_epoch):
            return None
        n = z.shape[1]
        if n > self.queue_length:
            raise SslAugError(
                f"queue_length={self.queue_length * dist_utils.world_size()} is not allowed with {n} images "
                f"per rank and {dist_utils.world_size()} rank(s): use 0 or at least batch size x world size"
            )
        queue_scores = None
        if self._queue_filled >= self.queue_length:
            queue_scores = [q @ self.prototypes.weight.t() for q in self.queue]
        newest = torch.stack([z[c] for c in self.crops_for_assign]).to(self.queue.dtype)  # (A, N, D), no index upload
        self.queue.copy_(torch.cat([newest, self.queue[:, : self.queue_length - n]], dim=1))
        self._queue_filled = min(self.queue_length, self._queue_filled + n)
        self.queue_count.fill_(self._queue_filled)
        return queue_scores

    @torch.no_grad()
    def _stats(self, loss: torch.Tensor, codes: torch.Tensor, queue_used: bool,
               frozen: bool = False) -> dict[str, torch.Tensor]:
        k = codes.shape[1]
        entropy = -(codes * codes.clamp_min(1e-12).log()).sum(dim=1).mean()
        # a scatter with a scalar fill: `used[idx] = True` would upload the Python True and sync the stream
        used = torch.zeros(k, device=codes.device).scatter_(0, codes.argmax(dim=1), 1.0)
        ln_k = math.log(k)
        return {
            "loss": loss,
            "code_entropy": entropy,
            "code_max": codes.max(dim=1).values.mean(),
            "proto_usage": used.mean(),
            "collapse": ((loss - ln_k).abs() <= 0.01 * ln_k).float() * (not frozen),
            "queue_used": torch.full((), float(queue_used), device=loss.device),  # a device fill, no upload
        }

    @torch.no_grad()
    def per_image_loss(self, views) -> torch.Tensor:
        """Swapped-prediction loss of each image (N,): Sinkhorn codes of this view set, no queue, the
        prototypes normalised as the next training forward would see them (without touching them)."""
        self._check_crops(views)
        with preserved_norm_buffers(self):
            z = F.normalize(self.projector(encode_views(self.backbone, views)), dim=1)
            prototypes = F.normalize(self.prototypes.weight, dim=1)
            scores = (z @ prototypes.t()).chunk(len(views))
            return swav_loss(scores, self.temperature, self.epsilon, self.sinkhorn_iterations,
                             self.crops_for_assign, sinkhorn_dtype=self.sinkhorn_dtype, reduction="none")

    def after_backward(self, step: int) -> None:
        """Drop the prototypes' gradient while they are frozen (``step < freeze_prototypes_iters``)."""
        self.prototypes.drop_grad_if_frozen(step)

    def health_messages(self, stats: dict) -> list[str]:
        """Human warnings from (logged) stats: the ln(K) collapse symptom and its known fixes."""
        if float(stats["collapse"]) > 0:
            k = self.prototypes.num_prototypes
            return [
                f"SwAV loss {float(stats['loss']):.4f} sits at ln(K)={math.log(k):.4f} (K={k}): "
                f"predictions are uniform (collapse); try epsilon 0.03, a longer prototype freeze, "
                f"or a later/smaller queue"
            ]
        return []
