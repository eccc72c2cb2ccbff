"""SimCLR: backbone + MLP projector + NT-Xent over 2 or more views; optional i-Mix (``method.mix``)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ssl_aug import distributed as dist_utils
from ssl_aug.losses import imix_nt_xent, nt_xent_multiview, nt_xent_per_sample
from ssl_aug.methods.base import (Method, check_views, encode_views, preserved_norm_buffers, register_method,
                                  require)
from ssl_aug.methods.imix import MixedViews
from ssl_aug.models.heads import ProjectionHead

__all__ = ["SimCLR", "similarity_stats"]


@torch.no_grad()
def similarity_stats(z: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mean cosine similarity of positive pairs and of negative pairs, z (V, N, D), V >= 2.

    Uses sums of unit vectors instead of the (VN)^2 matrix: sum over all ordered pairs = |sum z|^2,
    over same-image pairs (self included) = sum_n |sum_v z_vn|^2.
    """
    v, n, _ = z.shape
    z = F.normalize(z.float(), dim=-1)
    all_pairs = z.sum(dim=(0, 1)).square().sum()
    same_image = z.sum(dim=0).square().sum()
    pos = (same_image - v * n) / (v * (v - 1) * n)
    neg_count = (v * n) ** 2 - v * v * n
    neg = (all_pairs - same_image) / neg_count if neg_count > 0 else torch.zeros_like(pos)
    return {"pos_sim": pos, "neg_sim": neg}


@register_method("simclr")
class SimCLR(MixedViews, Method):
    """SimCLR (Chen et al. 2020): views -> backbone -> projector -> NT-Xent.

    forward(views: V x (N, 3, H, W), step, epoch) -> (loss, stats); V = 2 is the classic loss,
    V > 2 the multi-view form (all views of an image are positives). Views of equal size share
    one backbone forward; the projector sees all V * N rows in one batch. stats: loss, pos_sim,
    neg_sim (detached 0-d tensors). ``gather``: negatives from all ranks (with gradient); None = when
    more than one rank runs.

    ``mix = {mode, alpha, p}`` turns on i-Mix (Lee et al. 2021) in training mode: with probability p per
    image, view 0 is mixed with a partner from the batch (mode mixup | cutmix | gridmix | saliency_cutmix,
    lambda ~ Beta(alpha, alpha) drawn per image) and the loss becomes :func:`imix_nt_xent` (anchors: the
    mixed view; keys: view 1 of this rank; target lam * onehot(i) + (1 - lam) * onehot(perm(i))). Two views
    only. The mixing generator is seeded from (a seed drawn at construction, step, rank), so a resumed
    run mixes exactly as an uninterrupted one (the trainer seeds construction with the recipe seed).
    """

    def __init__(
        self,
        backbone: nn.Module,
        proj_hidden_dim: int = 2048,
        proj_dim: int = 128,
        temperature: float = 0.5,
        gather: bool | None = None,
        proj_layers: int = 2,
        mix: dict | None = None,
    ):
        super().__init__()
        require(temperature > 0, "temperature", temperature, "use a number > 0 (0.5 CIFAR, 0.1 ImageNet)")
        require(proj_hidden_dim >= 1, "proj_hidden_dim", proj_hidden_dim, "use an integer >= 1")
        require(proj_dim >= 1, "proj_dim", proj_dim, "use an integer >= 1")
        self.backbone = backbone
        self.projector = ProjectionHead(backbone.feature_dim, proj_hidden_dim, proj_dim, proj_layers)
        self.temperature = float(temperature)
        self.gather = dist_utils.world_size() > 1 if gather is None else bool(gather)
        self.init_mix(mix)

    def forward(self, views, step: int = 0, epoch: int = 0):
        n = check_views(views)
        if self.mixing:
            return self._imix_forward(views, n, step)
        z = self.projector(encode_views(self.backbone, views)).view(len(views), n, -1)
        loss = nt_xent_multiview(z, self.temperature, gather=self.gather)
        return loss, {"loss": loss.detach(), **similarity_stats(z.detach())}

    def _imix_forward(self, views, n: int, step: int):
        mixed, lam, perm = self.mixed_view(views, step)
        z = self.projector(encode_views(self.backbone, [mixed, views[1]])).view(2, n, -1)
        loss = imix_nt_xent(z[0], z[1], lam, perm, self.temperature)
        return loss, {"loss": loss.detach(), **similarity_stats(z.detach()), "mix_lam": lam.detach().float().mean()}

    @torch.no_grad()
    def per_image_loss(self, views) -> torch.Tensor:
        """Multi-view NT-Xent of each image within this view set (N,), no gradient, buffers kept."""
        n = check_views(views)
        with preserved_norm_buffers(self):
            z = self.projector(encode_views(self.backbone, views)).view(len(views), n, -1)
            return nt_xent_per_sample(z, self.temperature)

    @staticmethod
    def health_messages(stats: dict) -> list[str]:
        """Human warnings from (logged) stats: collapse when negatives look like positives."""
        neg = float(stats["neg_sim"])
        if neg > 0.95:
            return [f"SimCLR negatives have mean cosine similarity {neg:.3f} > 0.95: embeddings collapsed"]
        return []
