"""TANDA (Ratner et al. 2017, "Learning to Compose Domain-Specific Transformations for Data Augmentation"),
mean-field variant: a generator of TF sequences, L positions each with its own categorical over the 15
TFs of the `tf_sequence` op (logits (L, 15)), trained adversarially against a small CNN discriminator D
that tells real training images from TF-sequence outputs. The TFs are not differentiable, so the
generator is trained with REINFORCE: per image i with sequence a_i (one TF per position),

    reward_i = log D(h_{a_i}(x_i)) - distance_weight / (mse(h_{a_i}(x_i), x_i) + DISTANCE_EPS)

(the first term: the output looks real; the second, TANDA's inverse-MSE term: sequences that leave the
image (nearly) unchanged are penalised, so the identity is not the optimum), advantage = reward - b (b an
exponential moving average of the batch-mean reward), and the generator minimises

    loss = -mean_i advantage_i * sum_l log softmax(logits_l)[a_il] - entropy_weight * sum_l H(softmax(logits_l)).

Sequences are drawn and applied by the registered `tf_sequence` op itself (at the current probabilities),
so the learned probabilities mean exactly what the recipe key `augment.tf_sequence` means.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ssl_aug.augment.ops import OPS, Context
from ssl_aug.augment.ops.policy import RAND_OPS
from ssl_aug.augment.ops.tf_sequence import TfSequence, tf_names
from ssl_aug.augment.params import ViewParams
from ssl_aug.errors import SslAugError
from ssl_aug.registry import check_keys

__all__ = ["TandaSettings", "check_tanda", "TandaResult", "MeanFieldGenerator", "Discriminator", "reinforce_loss",
           "apply_tf_sequence", "sequence_rewards", "learn_tf_sequence", "top_tfs", "DISTANCE_EPS"]

DISTANCE_EPS = 1e-3  # mse on [0, 1] images: the identity costs distance_weight / DISTANCE_EPS


@dataclass
class TandaSettings:
    """The learner's knobs (the [tanda] table of a search spec)."""
    length: int = 2               # L, TFs per sequence
    m: float = 10.0               # TF magnitude of 30
    steps: int = 300              # generator/discriminator updates
    lr: float = 0.05              # generator (Adam on the logits)
    disc_lr: float = 1e-3         # discriminator (Adam)
    batch_size: int = 64
    entropy_weight: float = 0.01
    distance_weight: float = 1e-3
    baseline_decay: float = 0.9
    seed: int = 0


_BOUNDS = {  # key: (kind, low, high, text of the allowed values)
    "length": (int, 1, 8, "an integer 1-8"), "m": (float, 0.0, 30.0, "a number 0-30"),
    "steps": (int, 1, 100000, "an integer 1-100000"), "lr": (float, 1e-8, 100.0, "a number > 0"),
    "disc_lr": (float, 1e-8, 100.0, "a number > 0"), "batch_size": (int, 2, 4096, "an integer 2-4096"),
    "entropy_weight": (float, 0.0, 100.0, "a number >= 0"), "distance_weight": (float, 0.0, 100.0, "a number >= 0"),
    "baseline_decay": (float, 0.0, 0.999, "a number in [0, 0.999]"), "seed": (int, 0, 2 ** 62, "an integer >= 0")}


def check_tanda(table, seed: int = 0) -> dict:
    """The [tanda] table of a search spec -> every setting (defaults filled, seed defaulting to the spec's);
    one-line SslAugError naming a bad key or value and what is allowed."""
    if table is None:
        table = {}
    if not isinstance(table, dict):
        raise SslAugError(f"search [tanda] = {table!r} is not allowed; use a table with keys: {', '.join(_BOUNDS)}")
    check_keys(sorted(table), list(_BOUNDS), "search [tanda] key")
    out = {**TandaSettings(seed=seed).__dict__, **table}
    for key, (kind, low, high, allowed) in _BOUNDS.items():
        v = out[key]
        ok = not isinstance(v, bool) and isinstance(v, (int, float) if kind is float else int) and low <= v <= high
        if not ok:
            raise SslAugError(f"search tanda.{key} = {v!r} is not allowed; use {allowed}")
        out[key] = kind(v)
    return out


@dataclass
class TandaResult:
    probs: list                   # (L, 15) learned per-position probabilities
    m: float
    history: list = field(default_factory=list)  # {step, reward, d_real, d_fake, entropy} every log_every steps
    wall_s: float = 0.0
    cpu_s: float = 0.0


class MeanFieldGenerator(nn.Module):
    """Independent categoricals: logits (L, K), zero (uniform) at the start."""

    def __init__(self, length: int, num_tfs: int = RAND_OPS):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(length, num_tfs))

    def probs(self) -> torch.Tensor:
        """(L, K) rows summing to 1."""
        return self.logits.softmax(-1)


class Discriminator(nn.Module):
    """Small CNN: (M,3,h,w) in [0, 1] -> (M,) logit of 'real'."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.LeakyReLU(0.2),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - 0.5) * 4.0).squeeze(1)


def reinforce_loss(logits: torch.Tensor, choice: torch.Tensor, advantage: torch.Tensor,
                   entropy_weight: float = 0.0) -> torch.Tensor:
    """logits (L, K), choice (N, L) int64 TF per position, advantage (N,) -> scalar REINFORCE loss with an
    entropy bonus: -mean_i adv_i sum_l log p_l[a_il] - entropy_weight sum_l H(p_l)."""
    logp = logits.log_softmax(-1)                                   # (L, K)
    picked = logp.gather(1, choice.t()).t()                        # (N, L) log p_l[a_il]
    entropy = -(logp.exp() * logp).sum(-1)                          # (L,)
    return -(advantage.unsqueeze(1) * picked).sum(1).mean() - entropy_weight * entropy.sum()


def apply_tf_sequence(x: torch.Tensor, probs: list, m: float, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """x (N,3,s,s) float in [0, 1], probs (L, K) -> (TF-sequence outputs (N,3,s,s), choice (N, L)), drawn
    and applied by the registered tf_sequence op."""
    n, _, h, w = x.shape
    if h != w:
        raise SslAugError(f"TANDA needs square images; got {h}x{w}")
    op, cfg = OPS["tf_sequence"], TfSequence(probs=probs, m=m)
    params = ViewParams(op.sample(cfg, n, h, h, w, g))
    return op.apply(x, cfg, params, Context("exact", False, params)), params.tf_choice


def sequence_rewards(d_logits: torch.Tensor, out: torch.Tensor, x: torch.Tensor,
                     distance_weight: float) -> torch.Tensor:
    """D logits (N,), outputs and inputs (N,3,s,s) -> (N,) reward log D(h(x)) - w / (mse(h(x), x) + eps)."""
    mse = (out - x).pow(2).flatten(1).mean(1)
    return F.logsigmoid(d_logits) - distance_weight / (mse + DISTANCE_EPS)


def _float(images: torch.Tensor) -> torch.Tensor:
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()


def learn_tf_sequence(source: torch.Tensor, real: torch.Tensor, settings: TandaSettings,
                      log_every: int = 10, progress: bool = False) -> TandaResult:
    """source (N,3,s,s) images the TFs transform, real (M,3,s,s) images D calls real (uint8 or float in
    [0, 1]; often the same set) -> the learned per-position probabilities (seeded, CPU)."""
    wall, cpu = time.perf_counter(), time.process_time()
    torch.manual_seed(settings.seed)
    g = torch.Generator().manual_seed(settings.seed)
    gen, disc = MeanFieldGenerator(settings.length), Discriminator()
    opt_g = torch.optim.Adam(gen.parameters(), lr=settings.lr)
    opt_d = torch.optim.Adam(disc.parameters(), lr=settings.disc_lr, betas=(0.5, 0.999))
    baseline, history, b = None, [], settings.batch_size
    for step in range(1, settings.steps + 1):
        x = _float(source[torch.randint(0, len(source), (b,), generator=g)])
        r = _float(real[torch.randint(0, len(real), (b,), generator=g)])
        probs = gen.probs().detach().double()
        probs = (probs / probs.sum(-1, keepdim=True)).tolist()
        out, choice = apply_tf_sequence(x, probs, settings.m, g)
        d_fake, d_real = disc(out), disc(r)
        loss_d = (F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
                  + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        with torch.no_grad():
            reward = sequence_rewards(d_fake.detach(), out, x, settings.distance_weight)
        mean = float(reward.mean())
        decay = settings.baseline_decay
        baseline = mean if baseline is None else decay * baseline + (1 - decay) * mean
        loss_g = reinforce_loss(gen.logits, choice, reward - baseline, settings.entropy_weight)
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        if step % log_every == 0 or step == settings.steps:
            p = gen.probs().detach()
            rec = {"step": step, "reward": round(mean, 4),
                   "d_real": round(float(torch.sigmoid(d_real.detach()).mean()), 4),
                   "d_fake": round(float(torch.sigmoid(d_fake.detach()).mean()), 4),
                   "entropy": round(float(-(p * p.clamp_min(1e-12).log()).sum(-1).mean()), 4)}
            history.append(rec)
            if progress:
                print(f"tanda step {step}/{settings.steps}: reward {rec['reward']:.3f}, D(real) {rec['d_real']:.3f}, "
                      f"D(seq) {rec['d_fake']:.3f}, entropy {rec['entropy']:.3f}", flush=True)
    probs = gen.probs().detach().double()
    probs = (probs / probs.sum(-1, keepdim=True)).tolist()
    return TandaResult(probs, float(settings.m), history, time.perf_counter() - wall, time.process_time() - cpu)


def top_tfs(probs: list, k: int = 3) -> list[list[tuple[str, float]]]:
    """Per position, the k most probable TFs as (name, probability), best first."""
    names = tf_names()
    return [sorted(zip(names, row), key=lambda t: -t[1])[:k] for row in probs]
