"""Optimisers and learning-rate schedule used by the trainer: SGD, LARS, Adam(W); warm-up + cosine."""

from __future__ import annotations

import math

import torch
from torch import nn

from ssl_aug.errors import SslAugError


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weights with decay; biases and normalisation parameters (1-D) without decay and
    without LARS adaptation, as in SimCLR/solo-learn."""
    decay, no_decay = [], []
    for _, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0, "lars_exclude": True}]


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise trust ratio (You et al. 2017), as used for SimCLR.

    For every parameter not marked `lars_exclude`: g <- g + wd * w, then g <- g * eta * |w| / |g|
    (when both norms are positive), then momentum SGD. Each group's update runs on lists of tensors
    (torch._foreach_*: a few kernels per group on a GPU, not a Python loop per parameter), and reads
    nothing back to the host.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 0.02):
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars_exclude=False)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if group["weight_decay"]:
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
            if not group["lars_exclude"]:
                w_norm = torch.stack(torch._foreach_norm(params))
                g_norm = torch.stack(torch._foreach_norm(grads))
                trust = torch.where((w_norm > 0) & (g_norm > 0), group["eta"] * w_norm / g_norm,
                                    torch.ones_like(w_norm))
                grads = torch._foreach_mul(grads, list(trust.unbind(0)))
            old = [i for i, p in enumerate(params) if "momentum_buffer" in self.state[p]]
            new = [i for i, p in enumerate(params) if "momentum_buffer" not in self.state[p]]
            if old:
                bufs = [self.state[params[i]]["momentum_buffer"] for i in old]
                torch._foreach_mul_(bufs, group["momentum"])
                torch._foreach_add_(bufs, [grads[i] for i in old])
            for i in new:  # first step: the buffer starts as the update
                self.state[params[i]]["momentum_buffer"] = grads[i].clone()
            torch._foreach_add_(params, [self.state[p]["momentum_buffer"] for p in params], alpha=-group["lr"])
        return loss


def build_optimizer(model: nn.Module, name: str, lr: float, momentum: float, weight_decay: float):
    groups = parameter_groups(model, weight_decay)
    if name == "sgd":
        for g in groups:
            g.pop("lars_exclude", None)
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum)
    if name in ("adam", "adamw"):
        for g in groups:
            g.pop("lars_exclude", None)
        cls = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
        return cls(groups, lr=lr)
    raise SslAugError(f"optimizer {name!r} is not supported; choose one of: sgd, lars, adam, adamw")


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, min_ratio: float = 0.0) -> float:
    """Multiplier of the base lr at `step`: linear warm-up from 1/warmup to 1, then cosine to min_ratio."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def extended_schedule(step: int, segments: list, warmup_steps: int, min_ratio: float = 0.0) -> float:
    """Multiplier of the base lr for a run whose length grew on resume. segments: [[0, T0], [s1, T1], ...]:
    the first is warm-up + cosine over 0..T0; each later one is a new cosine tail that starts at the
    step s_i the run was extended at, warms up again (min(warmup_steps, 10% of the tail) steps) to the
    peak and decays to min_ratio at T_i (a warm restart, Loshchilov & Hutter 2017)."""
    start, total = segments[0]
    for seg_start, seg_total in segments[1:]:
        if step >= seg_start:
            start, total = seg_start, seg_total
    if start == 0:
        return warmup_cosine(step, total, warmup_steps, min_ratio)
    length = total - start
    return warmup_cosine(step - start, length, min(warmup_steps, length // 10), min_ratio)
