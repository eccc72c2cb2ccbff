"""Exponential moving average (EMA) of a network: the target / teacher / key encoder of a method.

``target <- m * target + (1 - m) * online`` over parameters, with the momentum ``m`` passed in at the
moment of the update (a method reads its own momentum attribute at step time, so a schedule that sets
that attribute before every optimiser step is honoured). Buffers (BatchNorm running statistics) are
not averaged: a target network computes its own, as in BYOL, MoCo and DINO.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn

__all__ = ["frozen_copy", "ema_update_", "cosine_momentum"]


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` whose parameters take no gradient (the start of an EMA target)."""
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update_(target, online, momentum: float) -> None:
    """In place: every target parameter t <- momentum * t + (1 - momentum) * o for its online twin o.

    target, online: modules of the same architecture, or equally long lists of parameters with equal
    shapes. momentum: a Python float in [0, 1] (1 leaves the target unchanged, 0 copies the online
    weights). One fused ``_foreach`` multiply-add, no host synchronisation.
    """
    t = list(target.parameters()) if isinstance(target, nn.Module) else list(target)
    o = list(online.parameters()) if isinstance(online, nn.Module) else list(online)
    if len(t) != len(o) or any(a.shape != b.shape for a, b in zip(t, o)):
        raise ValueError("ema_update_ needs a target and an online network of the same architecture")
    m = float(momentum)
    torch._foreach_mul_(t, m)
    torch._foreach_add_(t, [p.detach() for p in o], alpha=1.0 - m)


def cosine_momentum(steps_done: int, total_steps: int, base: float = 0.996, final: float = 1.0) -> float:
    """BYOL's cosine momentum: final - (final - base) * (cos(pi k / K) + 1) / 2 for the k-th update
    (k = steps done before it, K = total steps): ``base`` at the first step, rising to ``final``."""
    progress = min(max(steps_done, 0) / max(total_steps, 1), 1.0)
    return final - (final - base) * (math.cos(math.pi * progress) + 1.0) / 2.0
