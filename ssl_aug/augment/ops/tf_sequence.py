"""TANDA-style sequences of transformation functions (TFs; Ratner et al. 2017, mean-field generator): per
image, position l of L draws one TF from its own categorical `probs[l]` over the TF vocabulary (kornia's
RandAugment operation set, TF_NAMES, at magnitude m of 30) and the L TFs are applied in order. A TF may
repeat at several positions. Nested table, e.g. learned by `ssl-aug search` with strategy = "tanda":

    augment.tf_sequence = { probs = [[...15 numbers...], [...15 numbers...]], m = 10.0 }

Empty probs (the default) = off. Parameters (drawn only when on, so views without the op keep theirs):
tf_seed (N,) int64, tf_choice (N, L) int64 (TF index applied at each position) and the kornia parameters
of every (position l, TF j) with probs[l][j] > 0 for every image (`tf{l}.{j}.{o}.{key}`), so apply()
replays exactly (also on a subset of the rows)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ssl_aug.augment.ops.base import Op
from ssl_aug.augment.ops.kornia_ops import capture
from ssl_aug.augment.ops.policy import RAND_OPS, apply_choices, apply_rows, policy_module, rand_magnitude
from ssl_aug.errors import SslAugError

SUM_TOLERANCE = 1e-4


def tf_children() -> list:
    """The TF vocabulary: kornia RandAugment's sub-policies (each a PolicySequential of one op)."""
    return list(policy_module("randaugment").children())


def tf_names() -> list[str]:
    """Names of the 15 TFs in vocabulary order (AutoContrast, Equalize, Invert, Rotate, ...)."""
    return ["+".join(type(op).__name__ for op in child.children()) for child in tf_children()]


def _row_ok(row) -> bool:
    return (isinstance(row, (list, tuple)) and len(row) == RAND_OPS
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in row)
            and abs(sum(row) - 1.0) <= SUM_TOLERANCE)


@dataclass
class TfSequence:
    """probs: L rows of RAND_OPS probabilities (TF at each position); m: magnitude of 30."""
    probs: list = field(default_factory=list)
    m: float = 10.0

    def __post_init__(self):
        rows = self.probs
        if not isinstance(rows, (list, tuple)) or not all(_row_ok(r) for r in rows):
            raise SslAugError(f"view spec: tf_sequence.probs={rows!r} is not allowed; use a list of rows of "
                              f"{RAND_OPS} non-negative numbers, each summing to 1 (within {SUM_TOLERANCE:g}), "
                              f"or [] for off")
        self.probs = [[float(v) for v in r] for r in rows]
        m = self.m
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not 0 <= m <= 30:
            raise SslAugError(f"view spec: tf_sequence.m={m!r} is not allowed; use a number 0-30")
        self.m = float(m)


class TfSequenceOp(Op):
    name, config, stage = "tf_sequence", TfSequence, 12

    def active(self, cfg) -> bool:
        return bool(cfg.probs)

    def sample(self, cfg, n, size, height, width, g):
        if not cfg.probs:
            return {}
        seed = torch.randint(0, 2 ** 62, (1,), generator=g).expand(n).clone()
        sub = torch.Generator().manual_seed(int(seed[0]))
        probs = torch.tensor(cfg.probs, dtype=torch.float64)  # (L, K)
        choice = torch.multinomial(probs, n, replacement=True, generator=sub).t().contiguous()  # (n, L)
        out = {"tf_seed": seed, "tf_choice": choice}
        shape = (n, 3, size, size)
        for pos, row in enumerate(cfg.probs):
            for j, child in enumerate(tf_children()):
                for o, op in enumerate(child.children()):
                    s = int(torch.randint(0, 2 ** 62, (1,), generator=sub))  # drawn for every TF: stable seeds
                    if row[j] <= 0:
                        continue
                    gen = (lambda bs, op=op: op.forward_parameters(bs, mag=rand_magnitude(op, bs, cfg.m)))
                    out.update(capture(f"tf{pos}.{j}.{o}", gen, shape, s, ("tf_sequence", j, o, size, cfg.m)))
        return out

    def apply(self, x, cfg, p, ctx):
        if ctx.masked:
            return apply_choices(x, tf_children(), p.tf_choice, lambda pos, j: f"tf{pos}.{j}", p,
                                 skip=lambda pos, j: cfg.probs[pos][j] <= 0)
        return apply_rows(x, tf_children(), ctx.host.tf_choice, lambda pos, j: f"tf{pos}.{j}", ctx.host)

    def probe(self) -> dict:
        return {self.name: {"probs": [[1.0 / RAND_OPS] * RAND_OPS], "m": 10.0}}

    def off(self) -> dict:
        return {self.name: {"probs": []}}
