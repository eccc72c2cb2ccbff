"""VICReg: backbone + expander, invariance / variance / covariance regularisation of two views."""

from __future__ import annotations

import torch.nn as nn

from ssl_aug import distributed as dist_utils
from ssl_aug.losses.vicreg import vicreg_loss
from ssl_aug.methods.base import Method, check_views, encode_views, register_method, require
from ssl_aug.models.heads import ProjectionHead

__all__ = ["VICReg"]


@register_method("vicreg")
class VICReg(Method):
    """VICReg (Bardes, Ponce & LeCun 2022).

    forward(views: V >= 2 batches (N, 3, H, W), step, epoch) -> (loss, stats). z_v = expander(backbone(x_v))
    (``proj_layers`` Linear-BN-ReLU blocks then a Linear: the paper's 8192-8192-8192 expander, 2048 on
    CIFAR); loss = :func:`ssl_aug.losses.vicreg_loss` averaged over every unordered pair of views.
    ``gather`` (None: when more than one rank runs): variance and covariance over the global batch, as the
    reference code; False keeps per-rank statistics. No target network. Exported: ``backbone``; heads:
    projector (the expander). stats: loss, invariance, variance, covariance (unweighted terms).
    """

    def __init__(
        self,
        backbone: nn.Module,
        proj_hidden_dim: int = 8192,
        proj_dim: int = 8192,
        proj_layers: int = 3,
        sim_coeff: float = 25.0,
        std_coeff: float = 25.0,
        cov_coeff: float = 1.0,
        gamma: float = 1.0,
        gather: bool | None = None,
    ):
        super().__init__()
        for key, value in (("proj_hidden_dim", proj_hidden_dim), ("proj_dim", proj_dim), ("proj_layers", proj_layers)):
            require(isinstance(value, int) and value >= 1, key, value, "use an integer >= 1")
        for key, value in (("sim_coeff", sim_coeff), ("std_coeff", std_coeff), ("cov_coeff", cov_coeff)):
            require(value >= 0, key, value, "use a number >= 0 (VICReg: 25 / 25 / 1)")
        require(gamma > 0, "gamma", gamma, "use a number > 0 (VICReg: 1)")
        self.backbone = backbone
        self.projector = ProjectionHead(backbone.feature_dim, proj_hidden_dim, proj_dim, proj_layers)
        self.sim_coeff, self.std_coeff, self.cov_coeff = float(sim_coeff), float(std_coeff), float(cov_coeff)
        self.gamma = float(gamma)
        self.gather = dist_utils.world_size() > 1 if gather is None else bool(gather)

    def forward(self, views, step: int = 0, epoch: int = 0):
        n = check_views(views)
        z = self.projector(encode_views(self.backbone, views)).view(len(views), n, -1)
        pairs = [(a, b) for a in range(len(views)) for b in range(a + 1, len(views))]
        total, terms = 0.0, {}
        for a, b in pairs:
            loss, parts = vicreg_loss(z[a], z[b], self.sim_coeff, self.std_coeff, self.cov_coeff, self.gamma,
                                      gather=self.gather, return_terms=True)
            total = total + loss / len(pairs)
            for k, v in parts.items():
                terms[k] = terms.get(k, 0.0) + v / len(pairs)
        return total, {"loss": total.detach(), **terms}

    def health_messages(self, stats: dict) -> list[str]:
        """Collapse warning: the variance hinge is close to its maximum gamma (std of every dimension ~ 0)."""
        variance = float(stats["variance"])
        if variance > 0.9 * self.gamma:
            return [f"VICReg variance term {variance:.3f} ~ gamma={self.gamma}: embedding dimensions have almost no "
                    f"spread (collapse); raise std_coeff or lower the learning rate"]
        return []
