"""Per-image RandAugment / AutoAugment (kornia's operation set). Flat view field auto_augment = None |
"randaugment" (n=2 distinct ops per image, magnitude m=10 of 30) | "autoaugment" (one CIFAR-10
sub-policy per image). Each image draws its own ops and their parameters (kornia draws one op set per
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
RAND_N, RAND_M = 2, 10
_POLICIES: dict = {}


@dataclass
class Policy:
    auto_augment: Optional[str] = None

    def __post_init__(self):
        if self.auto_augment not in AUTO_AUGMENT:
            raise SslAugError(f"view spec: auto_augment={self.auto_augment!r} is not allowed; "
                              f"use one of {', '.join(repr(a) for a in AUTO_AUGMENT)}")


def policy_module(name: str):
    """The kornia policy whose children (PolicySequential of OperationBase ops) are the sub-policies."""
    if name not in _POLICIES:
        from kornia.augmentation import auto
        _POLICIES[name] = auto.RandAugment(n=RAND_N, m=RAND_M) if name == "randaugment" else auto.AutoAugment("cifar10")
    return _POLICIES[name]


def _magnitude(op, shape) -> Optional[torch.Tensor]:
    """RandAugment's fixed magnitude for `op` (kornia RandAugment.forward_parameters)."""
    if op.magnitude_range is None:
        return None
    m = torch.tensor([RAND_M / 30] * shape[0])
    lo, hi = op.magnitude_range
    mag = (1 - m) * float(hi - lo) + lo if op._factor_name == "bits_factor" else m * float(hi - lo) + lo
    if op._factor_name == "translate_x":
        mag = mag * shape[-1]
    elif op._factor_name == "translate_y":
        mag = mag * shape[-2]
    return mag


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
            choice = torch.rand((n, len(children)), generator=sub).argsort(1)[:, :RAND_N]
        else:
            choice = torch.randint(0, len(children), (n, 1), generator=sub)
        out = {"policy_seed": seed, "policy_choice": choice}
        shape = (n, 3, size, size)
        for j, child in enumerate(children):
            for o, op in enumerate(child.children()):
                s = int(torch.randint(0, 2 ** 62, (1,), generator=sub))
                rand = cfg.auto_augment == "randaugment"
                gen = (lambda bs, op=op, rand=rand: op.forward_parameters(bs, mag=_magnitude(op, bs) if rand else None))
                out.update(capture(f"policy{j}.{o}", gen, shape, s, (cfg.auto_augment, j, o, size)))
        return out

    def apply(self, x, cfg, p, ctx):
        children = list(policy_module(cfg.auto_augment).children())
        choice = ctx.host.policy_choice
        for k in range(choice.shape[1]):
            for j, child in enumerate(children):
                rows = index_rows(choice[:, k] == j)
                if not rows.numel():
                    continue
                rows_d = rows.to(x.device, non_blocking=True)
                y = x.index_select(0, rows_d)
                for o, op in enumerate(child.children()):
                    params = unpack(f"policy{j}.{o}", ctx.host, rows=rows, shape=y.shape)
                    params = {kk: (v if kk == "forward_input_shape" else v.to(x.device, non_blocking=True))
                              for kk, v in params.items()}
                    y = op(y, params=params)
                x = x.index_copy(0, rows_d, y.clamp(0.0, 1.0))
        return x

    def probe(self) -> dict:
        return {"auto_augment": "randaugment"}

    def off(self) -> dict:
        return {"auto_augment": None}
