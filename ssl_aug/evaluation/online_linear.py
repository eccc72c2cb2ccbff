"""Online linear probe: a linear head on detached backbone features with its own optimiser, trained on
the labelled training images alongside the SSL loss (recipe key eval.online_linear, off by default).

Each step: features of the batch's first view (no gradient, backbone in eval mode so BatchNorm statistics
are not touched), predictions scored *before* the head's update (progressive validation: every image is
out-of-sample for the head when it is scored), then one Adam step on cross-entropy. Counts stay on the
device; `end_epoch()` reads them once: {"online_linear_top1", "online_linear_loss"} for metrics.jsonl.
Costs one extra no-grad backbone forward of one view per step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssl_aug.errors import SslAugError

__all__ = ["OnlineLinearProbe"]


class OnlineLinearProbe:
    """labels_all (N,) int64 labels of the training set (indexed by batch indices; -1 = unlabelled), C classes.

    A trainer hook: `after_step(trainer, indices, views)`, `end_epoch(trainer) -> dict`, `hook_state()` /
    `load_hook_state(state)` (checkpointed with the run). The head (BatchNorm1d without affine + Linear) is
    built on the first step, when the feature dimension and device are known.
    """

    def __init__(self, labels_all: torch.Tensor, num_classes: int, lr: float = 1e-3):
        labels_all = torch.as_tensor(labels_all).long()
        if labels_all.numel() == 0 or int(labels_all.max()) < 0:
            raise SslAugError("eval.online_linear needs labelled training images; this data set has none "
                              "(set eval.online_linear = false)")
        self.labels_all, self.num_classes, self.lr = labels_all, int(num_classes), float(lr)
        self.module: nn.Module | None = None

    def _build(self, dim: int, device) -> None:
        self.module = nn.Sequential(nn.BatchNorm1d(dim, affine=False), nn.Linear(dim, self.num_classes)).to(device)
        self.optimizer = torch.optim.Adam(self.module.parameters(), lr=self.lr)
        self.labels_all = self.labels_all.to(device)
        self.counts = torch.zeros(3, dtype=torch.float64, device=device)  # correct, seen, loss sum

    def update(self, backbone: nn.Module, view: torch.Tensor, indices: torch.Tensor) -> None:
        """One probe step on view (B,3,H,W) (normalised floats) of the images `indices` (B,)."""
        was = backbone.training
        backbone.eval()
        with torch.no_grad():
            f = backbone(view).float().flatten(1)
        backbone.train(was)
        if self.module is None:
            self._build(f.shape[1], f.device)
        y = self.labels_all[indices.to(self.labels_all.device)]
        keep = y >= 0  # unlabelled images (label -1) are skipped without a host sync
        self.module.train()
        logits = self.module(f)
        w = keep.to(logits.dtype)
        loss_each = F.cross_entropy(logits, y.clamp_min(0), reduction="none") * w
        with torch.no_grad():  # scored before the update: progressive validation
            self.counts += torch.stack([((logits.argmax(1) == y) & keep).sum().double(), w.sum().double(),
                                        loss_each.sum().double()])
        self.optimizer.zero_grad(set_to_none=True)
        (loss_each.sum() / w.sum().clamp_min(1)).backward()
        self.optimizer.step()

    def after_step(self, trainer, indices: torch.Tensor, views) -> None:
        self.update(trainer.method.backbone, views[0], indices)

    def end_epoch(self, trainer=None) -> dict:
        """This epoch's accuracy and loss (one host read), then reset the counts."""
        if self.module is None:
            return {}
        correct, seen, loss = self.counts.tolist()
        self.counts.zero_()
        return {"online_linear_top1": correct / max(seen, 1.0), "online_linear_loss": loss / max(seen, 1.0)}

    def hook_state(self) -> dict:
        """Head, running counts and optimiser (CPU tensors): what a checkpoint keeps for an exact resume."""
        if self.module is None:
            return {}
        return {"module": {k: v.detach().cpu() for k, v in self.module.state_dict().items()},
                "optimizer": self.optimizer.state_dict(), "counts": self.counts.cpu()}

    def load_hook_state(self, state: dict, device=None) -> None:
        if not state:
            return
        weight = state["module"]["1.weight"]
        self._build(weight.shape[1], device or weight.device)
        self.module.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.counts.copy_(state["counts"])
