"""The evaluator contract: one file per evaluator, registered by name, with its own config dataclass;
results go to eval.json under the evaluator's name and into the printed report; the same evaluator runs
after training, every N epochs during training (`every`), and from `ssl-aug eval`.

    @register_evaluator("toy")
    class Toy(Evaluator):
        @dataclass
        class Config(EvaluatorConfig):
            scale: float = 1.0
        def run(self, ctx):                       # ctx: EvalContext (features, images, labels, ...)
            return {"mean_norm": float(ctx.features("test").norm(dim=1).mean()) * self.config.scale}

Recipe: `eval.toy = true` or `eval.toy = {scale = 2.0, every = 5}`; CLI: `ssl-aug eval RUN --evaluator toy`.
The short keys kept from older recipes (eval.final_knn, knn_k, knn_temperature, knn_index, knn_nlist,
knn_nprobe, linear, tta, invariance, invariance_ops) configure the built-in knn / linear / tta / invariance
evaluators.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ssl_aug.errors import SslAugError
from ssl_aug.evaluation.features import extract_features
from ssl_aug.registry import Registry, check_keys

__all__ = ["EVALUATORS", "register_evaluator", "list_evaluators", "get_evaluator", "Evaluator", "EvaluatorConfig",
           "EvalContext", "build_evaluator", "pct"]

EVALUATORS = Registry("evaluator")


def register_evaluator(name: str):
    """Class decorator: make an Evaluator subclass runnable as `eval.<name>` / `--evaluator <name>`."""
    def add(cls):
        if not (isinstance(cls, type) and issubclass(cls, Evaluator)):
            raise TypeError(f"register_evaluator({name!r}) expects an Evaluator subclass, got {cls!r}")
        return EVALUATORS.register(name, cls, replace=True)
    return add


def list_evaluators() -> list[str]:
    return EVALUATORS.names()


def get_evaluator(name: str) -> type["Evaluator"]:
    return EVALUATORS.get(name)


def pct(x) -> str:
    """A fraction as a percentage with two decimals ('-' for None / NaN)."""
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


@dataclass
class EvaluatorConfig:
    """Keys every evaluator takes. every: epochs between runs during training (0: after training only)."""

    every: int = 0


class Evaluator(ABC):
    """Base of every evaluator: `run(ctx) -> dict` (JSON-friendly), `rows(result)` for the printed metrics
    table ((evaluation, top-1 %, top-5 %, ECE) strings), `section(result)` for Markdown after it, and
    `flat(result)` for the scalar metrics ablation tables compare."""

    Config: ClassVar[type] = EvaluatorConfig

    def __init__(self, name: str, config: Any = None):
        self.name = name
        self.config = config if config is not None else self.Config()

    @abstractmethod
    def run(self, ctx: "EvalContext") -> dict:
        """Evaluate on `ctx` -> a JSON-friendly result (eval.json[name])."""

    def rows(self, result: dict) -> list[tuple[str, str, str, str]]:
        return []

    def section(self, result: dict) -> str:
        return ""

    def flat(self, result: dict) -> dict[str, float]:
        """Scalar metrics as {f"{name}_{key}": value} (top-level numbers of the result by default)."""
        return {f"{self.name}_{k}": v for k, v in result.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)}


def build_evaluator(name: str, value: Any = True) -> Evaluator:
    """`eval.<name>` = true | a table of the evaluator's Config keys -> an Evaluator (one-line errors)."""
    cls = get_evaluator(name)
    if value is True:
        return cls(name)
    if not isinstance(value, dict):
        raise SslAugError(f"recipe key 'eval.{name}' = {value!r} is not allowed; use true, false or a table of its "
                          f"keys: {', '.join(f.name for f in dataclasses.fields(cls.Config))}")
    fields = {f.name: f for f in dataclasses.fields(cls.Config)}
    check_keys(value, fields, "recipe key", f"eval.{name}.", f" of evaluator {name!r}")
    for key, v in value.items():
        default = fields[key].default
        if isinstance(default, bool) != isinstance(v, bool) or (
                isinstance(default, (int, float)) and not isinstance(v, (int, float))):
            raise SslAugError(f"recipe key 'eval.{name}.{key}' = {v!r} must be {type(default).__name__}")
    config = cls.Config(**value)
    if getattr(config, "every", 0) < 0:
        raise SslAugError(f"recipe key 'eval.{name}.every' must be >= 0 (0 = after training only)")
    return cls(name, config)


class EvalContext:
    """What an evaluator sees: an encoder (normalised float (N,3,H,W) -> (N,D)) with its RGB mean / std,
    a labelled bank `train` and queries `test` (each (uint8 images (N,3,H,W), labels (N,) int64)), and
    the results of the evaluators that ran before it (`results`, JSON) plus non-JSON objects (`shared`)."""

    def __init__(self, encoder: nn.Module, mean, std, train, test, *, num_classes: int | None = None,
                 batch_size: int = 512, amp: bool = False, seed: int = 0, progress: bool = True,
                 cache_dir=None, run_dir: Path | None = None, classes=None, test_groups=None, group_names=None,
                 leave_one_out: bool = False):
        self.encoder, self.mean, self.std = encoder, mean, std
        self.train, self.test = train, test
        self.num_classes = int(num_classes or max(int(train[1].max()), int(test[1].max())) + 1)
        self.batch_size, self.amp, self.seed, self.progress = batch_size, amp, seed, progress
        self.cache_dir, self.run_dir = cache_dir, run_dir
        self.classes, self.test_groups, self.group_names = classes, test_groups, group_names
        self.leave_one_out = leave_one_out
        self.results: dict = {}
        self.shared: dict = {}
        self._features: dict[str, torch.Tensor] = {}

    def embed(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """L2-normalised features (N, D) float32 (CPU) of any uint8 images."""
        return extract_features(self.encoder, images_uint8, self.mean, self.std, batch_size=self.batch_size,
                                amp=self.amp, progress=self.progress)

    def features(self, split: str) -> torch.Tensor:
        """Features of the bank ("train") or the queries ("test"), computed once."""
        if split not in ("train", "test"):
            raise SslAugError(f"EvalContext.features: split {split!r} is not allowed; choose train or test")
        other = "test" if split == "train" else "train"
        if split not in self._features and self.leave_one_out and other in self._features:
            self._features[split] = self._features[other]  # the queries are the bank images: computed once
        if split not in self._features:
            images = (self.train if split == "train" else self.test)[0]
            self._features[split] = extract_features(self.encoder, images, self.mean, self.std,
                                                     batch_size=self.batch_size, amp=self.amp,
                                                     cache_dir=self.cache_dir, progress=self.progress)
        return self._features[split]
