"""Per-image RandAugment / AutoAugment (kornia's operation set). Flat view fields auto_augment = None |
"randaugment" (randaugment_n distinct ops per image, default 2, at magnitude randaugment_m of 30,
default 10; Cubuk et al. 2020) | "autoaugment" (one CIFAR-10 sub-policy per image). Each image draws
its own ops and their parameters (kornia draws one op set per
call). Parameters: policy_seed (N,) int64 (one draw per view, kept for every view so the parameters
of the other ops never depend on the policy); when active, policy_choice (N, n) int64 (index of the
sub-policy applied k-th) and each sub-policy's kornia parameters for every image
(`policy{j}.{op}.{key}`), so apply() replays exactly."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ssl_aug.augment.ops.base import Op, index_rows
from ssl_aug.augment.ops.kornia_ops import capture, unpack
from ssl_aug.errors import SslAugError

AUTO_AUGMENT = (None, "randaugment", "autoaugment")
RAND_OPS = 15  # kornia's RandAugment operation set
_POLICIES: dict = {}


@dataclass
class Policy:
    auto_augment: Optional[str] = None
    randaugment_n: int = 2  # RandAugment N: distinct ops per image
    randaugment_m: float = 10.0  # RandAugment M: magnitude on kornia's 0-30 scale

    def __post_init__(self):
        if self.auto_augment not in AUTO_AUGMENT:
            raise SslAugError(f"view spec: auto_augment={self.auto_augment!r} is not allowed; "
                              f"use one of {', '.join(repr(a) for a in AUTO_AUGMENT)}")
        n = self.randaugment_n
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= RAND_OPS:
            raise SslAugError(f"view spec: randaugment_n={n!r} is not allowed; use an integer 1-{RAND_OPS}")
        m = self.randaugment_m
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not 0 <= m <= 30:
            raise SslAugError(f"view spec: randaugment_m={m!r} is not allowed; use a number 0-30")


def policy_module(name: str):
    """The kornia policy whose children (PolicySequential of OperationBase ops) are the sub-policies."""
    if name not in _POLICIES:
        from kornia.augmentation import auto
        # n and m are applied by PolicyOp itself (choice and rand_magnitude), so one module serves every (n, m)
        _POLICIES[name] = auto.RandAugment(n=2, m=10) if name == "randaugment" else auto.AutoAugment("cifar10")
    return _POLICIES[name]


def rand_magnitude(op, shape, m_of_30: float) -> Optional[torch.Tensor]:
    """RandAugment's fixed magnitude M (of 30) for `op` (as kornia RandAugment.forward_parameters)."""
    if op.magnitude_range is None:
        return None
    m = torch.tensor([m_of_30 / 30] * shape[0])
    lo, hi = op.magnitude_range
    mag = (1 - m) * float(hi - lo) + lo if op._factor_name == "bits_factor" else m * float(hi - lo) + lo
    if op._factor_name == "translate_x":
        mag = mag * shape[-1]
    elif op._factor_name == "translate_y":
        mag = mag * shape[-2]
    return mag


def apply_sub_policy(y: torch.Tensor, child, prefix: str, host, rows: Optional[torch.Tensor]) -> torch.Tensor:
    """One sub-policy (a kornia PolicySequential) on y (M,3,h,w), the images `rows` of the batch (None: all),
    with the parameters captured under `prefix` (`{prefix}.{o}.{key}` for its o-th op)."""
    for o, op in enumerate(child.children()):
        params = unpack(f"{prefix}.{o}", host, rows=rows, shape=y.shape)
        params = {k: (v if k == "forward_input_shape" else v.to(y.device, non_blocking=True))
                  for k, v in params.items()}
        y = op(y, params=params)
    return y


def apply_choices(x: torch.Tensor, children, choice: torch.Tensor, prefix, params, skip=lambda k, j: False):
    """Masked form (non-CPU devices): at each position k, every sub-policy j runs on the whole batch x
    (M,3,h,w) with each image's own parameters (device ViewParams `params`, `{prefix(k, j)}.{o}.{key}`),
    and the images whose choice[:, k] == j take its result (torch.where): no host index sets, no uploads,
    no host reads. Per image the same result as running j on that image's row alone. skip(k, j): sub-policies
    that are never chosen there (no parameters were drawn for them)."""
    for k in range(choice.shape[1]):
        for j, child in enumerate(children):
            if skip(k, j):
                continue
            y = apply_sub_policy(x, child, prefix(k, j), params, rows=None)
            x = torch.where((choice[:, k] == j).view(-1, 1, 1, 1), y.clamp(0.0, 1.0), x)
    return x


def apply_rows(x: torch.Tensor, children, choice: torch.Tensor, prefix, host, skip=lambda k, j: False):
    """Index form (CPU, bit-identical to the pinned views): at each position k, sub-policy j runs on the rows
    whose host choice[:, k] == j only, with those rows' parameters (host ViewParams `host`)."""
    for k in range(choice.shape[1]):
        for j, child in enumerate(children):
            rows = index_rows(choice[:, k] == j)
            if skip(k, j) or not rows.numel():
                continue
            rows_d = rows.to(x.device, non_blocking=True)
            y = apply_sub_policy(x.index_select(0, rows_d), child, prefix(k, j), host, rows)
            x = x.index_copy(0, rows_d, y.clamp(0.0, 1.0))
    return x


class PolicyOp(Op):
    name, config, stage, nested = "policy", Policy, 10, False

    def active(self, cfg) -> bool:
        return cfg.auto_augment is not None

    def sample(self, cfg, n, size, height, width, g):
        seed = torch.randint(0, 2 ** 62, (1,), generator=g).expand(n).clone()
        if cfg.auto_augment is None:
            return {"policy_seed": seed}
        pol = policy_module(cfg.auto_augment)
        children = list(pol.children())
        sub = torch.Generator().manual_seed(int(seed[0]))
        if cfg.auto_augment == "randaugment":
            choice = torch.rand((n, len(children)), generator=sub).argsort(1)[:, :cfg.randaugment_n]
        else:
            choice = torch.randint(0, len(children), (n, 1), generator=sub)
        out = {"policy_seed": seed, "policy_choice": choice}
        shape = (n, 3, size, size)
        for j, child in enumerate(children):
            for o, op in enumerate(child.children()):
                s = int(torch.randint(0, 2 ** 62, (1,), generator=sub))
                m = float(cfg.randaugment_m) if cfg.auto_augment == "randaugment" else None
                gen = (lambda bs, op=op, m=m: op.forward_parameters(
                    bs, mag=None if m is None else rand_magnitude(op, bs, m)))
                out.update(capture(f"policy{j}.{o}", gen, shape, s, (cfg.auto_augment, j, o, size, m)))
        return out

    def apply(self, x, cfg, p, ctx):
        children = list(policy_module(cfg.auto_augment).children())
        if ctx.masked:
            return apply_choices(x, children, p.policy_choice, lambda k, j: f"policy{j}", p)
        return apply_rows(x, children, ctx.host.policy_choice, lambda k, j: f"policy{j}", ctx.host)

    def probe(self) -> dict:
        return {"auto_augment": "randaugment"}

    def off(self) -> dict:
        return {"auto_augment": None}
