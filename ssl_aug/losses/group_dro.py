"""Group DRO (Sagawa et al. 2019) in its online form, the class-conditional variant used by CLAMP/CAMEL
(worst subgroup within each class), and the subgroup consistency loss.

Online group DRO, one step with per-image losses l (N,), group ids g (N,), weights q (G,):
    L_g   = mean of l over the images of group g (groups absent from the batch are skipped)
    q_g  <- q_g * exp(eta * L_g)   for present g, then q <- q / sum(q)
    loss  = sum_g q_g * L_g        (q detached: the weights are not differentiated)
Class-conditional: one such q per class over the (class, group) cells of that class; loss = mean over
the classes in the batch of sum_g q_{c,g} L_{c,g}.

Example:
    >>> dro = GroupDRO(num_groups=4, eta=0.01)
    >>> loss = dro(F.cross_entropy(logits, y, reduction="none"), groups)   # updates dro.q
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssl_aug.errors import SslAugError

__all__ = ["group_mean_losses", "update_group_weights", "group_dro_loss", "class_conditional_dro_loss",
           "consistency_loss", "GroupDRO"]


def _check(losses: torch.Tensor, groups, num_groups: int, eta: float) -> torch.Tensor:
    if groups is None:
        raise SslAugError("group DRO needs group labels (groups=None); use a data set with groups "
                          "(embedded spurious=RATE, or an image-folder groups CSV)")
    g = torch.as_tensor(groups, device=losses.device)
    if losses.ndim != 1 or g.shape != losses.shape:
        raise SslAugError(f"group DRO needs per-image losses (N,) and groups (N,); got {tuple(losses.shape)} "
                          f"and {tuple(g.shape)}")
    if not eta >= 0:
        raise SslAugError(f"group DRO eta={eta!r} is not allowed; allowed: a step size >= 0")
    if g.numel() and (int(g.min()) < 0 or int(g.max()) >= num_groups):
        raise SslAugError(f"group ids span {int(g.min())}..{int(g.max())}; allowed 0..{num_groups - 1}")
    return g.long()


def group_mean_losses(losses: torch.Tensor, groups: torch.Tensor, num_groups: int):
    """Per-group mean loss (G,) (0 where absent) and image counts (G,) from losses (N,), groups (N,)."""
    counts = torch.bincount(groups, minlength=num_groups).to(losses.dtype)
    sums = torch.zeros(num_groups, dtype=losses.dtype, device=losses.device).index_add(0, groups, losses)
    return sums / counts.clamp_min(1), counts


def update_group_weights(q: torch.Tensor, group_loss: torch.Tensor, present: torch.Tensor, eta: float) -> torch.Tensor:
    """q (..., G) -> q * exp(eta * group_loss) on present groups, renormalised over the last dim.
    Computed in log space (no overflow for large eta * loss)."""
    logq = q.clamp_min(1e-38).log() + eta * group_loss.detach() * present.to(q.dtype)
    return torch.softmax(logq, dim=-1)


def group_dro_loss(losses: torch.Tensor, groups, num_groups: int, q: torch.Tensor, eta: float = 0.01):
    """Online group DRO step. losses (N,) per image, groups (N,) ids in 0..G-1, q (G,) current weights.
    Returns (loss 0-d, new q (G,) detached, group mean losses (G,))."""
    g = _check(losses, groups, num_groups, eta)
    mean, counts = group_mean_losses(losses, g, num_groups)
    q = update_group_weights(q.to(losses.device, losses.dtype), mean, counts > 0, eta).detach()
    return (q * mean).sum(), q, mean


def class_conditional_dro_loss(losses: torch.Tensor, labels, groups, num_classes: int, num_groups: int,
                               q: torch.Tensor, eta: float = 0.01):
    """CLAMP's class-conditional group DRO: q (C, G), one distribution per class over its subgroups.
    Returns (loss 0-d, new q (C, G) detached, cell mean losses (C, G))."""
    y = torch.as_tensor(labels, device=losses.device).long()
    g = _check(losses, groups, num_groups, eta)
    if y.shape != losses.shape or (y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes)):
        raise SslAugError(f"class-conditional group DRO needs labels (N,) in 0..{num_classes - 1}")
    mean, counts = group_mean_losses(losses, y * num_groups + g, num_classes * num_groups)
    mean, counts = mean.view(num_classes, num_groups), counts.view(num_classes, num_groups)
    q = update_group_weights(q.to(losses.device, losses.dtype), mean, counts > 0, eta).detach()
    # renormalise each class's weights over its present cells (absent cells keep their q for later steps)
    w = q * (counts > 0)
    w = w / w.sum(1, keepdim=True).clamp_min(1e-38)
    has = counts.sum(1) > 0
    return (w * mean).sum(1)[has].mean(), q, mean


def consistency_loss(logits: torch.Tensor, logits_changed: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence between the predictions for images (N, C) and their subgroup-changed
    versions (N, C), averaged over the batch (CAMEL/CLAMP consistency term; 0 iff they agree)."""
    if logits.shape != logits_changed.shape or logits.ndim != 2:
        raise SslAugError(f"consistency_loss needs two (N, C) logit tensors of one shape; got "
                          f"{tuple(logits.shape)} and {tuple(logits_changed.shape)}")
    lp, lq = F.log_softmax(logits.float(), 1), F.log_softmax(logits_changed.float(), 1)
    lm = torch.logsumexp(torch.stack([lp, lq]), 0) - torch.log(torch.tensor(2.0, device=lp.device))
    kl = lambda a: (a.exp() * (a - lm)).sum(1)  # noqa: E731
    return (0.5 * (kl(lp) + kl(lq))).mean()


class GroupDRO(nn.Module):
    """Stateful online group DRO: buffer q (G,) or, class_conditional, (C, G), starting uniform.
    forward(losses (N,), groups (N,), labels (N,) = needed when class_conditional) -> loss 0-d."""

    def __init__(self, num_groups: int, eta: float = 0.01, class_conditional: bool = False,
                 num_classes: int | None = None):
        super().__init__()
        if not isinstance(num_groups, int) or num_groups < 1:
            raise SslAugError(f"GroupDRO num_groups={num_groups!r} is not allowed; allowed: an integer >= 1")
        if class_conditional and not (isinstance(num_classes, int) and num_classes >= 1):
            raise SslAugError(f"class-conditional GroupDRO needs num_classes >= 1, got {num_classes!r}")
        self.num_groups, self.eta, self.class_conditional, self.num_classes = num_groups, float(eta), \
            class_conditional, num_classes
        shape = (num_classes, num_groups) if class_conditional else (num_groups,)
        self.register_buffer("q", torch.full(shape, 1.0 / num_groups))

    def forward(self, losses: torch.Tensor, groups, labels=None) -> torch.Tensor:
        if self.class_conditional:
            if labels is None:
                raise SslAugError("class-conditional group DRO needs the class labels of the batch")
            loss, q, _ = class_conditional_dro_loss(losses, labels, groups, self.num_classes, self.num_groups,
                                                    self.q, self.eta)
        else:
            loss, q, _ = group_dro_loss(losses, groups, self.num_groups, self.q, self.eta)
        self.q.copy_(q)
        return loss
