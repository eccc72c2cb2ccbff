"""Generic checks of every value in a recipe, before any work: numbers finite and in range, text valid.

One walker visits every field of the typed sections (the Config dataclasses) and every value nested in
the free-form tables ([method], [augment], data.options, model.backbone_args):
- every number must be finite (no NaN / inf), every integer must fit the 32-bit range the training code
  hands to torch (`MAX_INT`), unless `RANGES` says otherwise;
- a field listed in `RANGES` must lie in its declared range (the allowed values are data, one line per key);
- every string must be valid UTF-8 text without NUL characters (file systems and torch reject both).
A bad value is one SslAugError line naming the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from dataclasses import dataclass

from ssl_aug.errors import SslAugError

__all__ = ["Range", "RANGES", "MAX_INT", "allowed_range", "check_option_types", "check_recipe_values", "check_value"]

MAX_INT = 2**31 - 1  # default bound for integers: counts, sizes and steps beyond it are never meant


@dataclass(frozen=True)
class Range:
    """Allowed numbers: low <= x (low < x when low_open) and x <= high; None = unbounded on that side."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    text: str = ""  # how the range reads in an error line (default: from the bounds)

    def contains(self, x) -> bool:
        if self.low is not None and (x <= self.low if self.low_open else x < self.low):
            return False
        return self.high is None or (x < self.high if self.high_open else x <= self.high)

    def __str__(self) -> str:
        if self.text:
            return self.text
        lo = "" if self.low is None else f"{'>' if self.low_open else '>='} {self.low}"
        hi = "" if self.high is None else f"{'<' if self.high_open else '<='} {self.high}"
        return " and ".join(p for p in (lo, hi) if p) or "any finite number"


POSITIVE, NON_NEGATIVE, FRACTION = Range(0, low_open=True), Range(0), Range(0, 1)
COUNT = Range(1, MAX_INT, text=f"> 0 (a whole number >= 1) and <= {MAX_INT}")  # at least one
# The allowed range of every numeric recipe key of the typed sections (dotted name -> Range).
RANGES: dict[str, Range] = {
    "seed": Range(0, 2**32 - 1),  # torch.manual_seed / numpy seeds; the trainer derives seed*1000 + rank
    "data.subset": Range(0, MAX_INT),
    "train.epochs": COUNT,
    "train.max_steps": Range(0, MAX_INT),
    "train.batch_size": COUNT,
    "train.lr": POSITIVE,
    "train.momentum": FRACTION,
    "train.weight_decay": NON_NEGATIVE,
    "train.warmup_epochs": NON_NEGATIVE,
    "train.min_lr_ratio": FRACTION,
    "train.grad_clip": NON_NEGATIVE,
    "train.log_every": COUNT,
    "train.checkpoint_every": Range(0, MAX_INT),
    "train.keep_checkpoints": COUNT,
    "train.threads": Range(0, 1024),
    "train.view_candidates": Range(1, 64),
    "eval.knn_k": COUNT,
    "eval.knn_temperature": Range(0.002, text=">= 0.002 (the kNN vote weights exp(similarity / T) overflow below it)"),
    "eval.knn_every": Range(0, MAX_INT),
    "eval.monitor_train": COUNT,
    "eval.monitor_test": COUNT,
    "eval.knn_nlist": Range(0, MAX_INT),
    "eval.knn_nprobe": COUNT,
    "augment.multicrop.local_views": Range(0, 64),
    "augment.multicrop.size": Range(1, 4096),
    "augment.size": Range(1, 4096),
    "augment.views": Range(1, 64),
    # Method options, by pattern (methods added later inherit them): widths, counts, temperatures, momenta.
    "method.*_dim": Range(1, 65536),
    "method.num_prototypes": Range(1, 65536),
    "method.*_layers": Range(1, 16),
    "method.temperature": POSITIVE,
    "method.*_temperature": POSITIVE,
    "method.epsilon": POSITIVE,
    "method.sinkhorn_iterations": Range(1, 1000),
    "method.queue_length": Range(0, 2**20),
    "method.queue_size": Range(0, 2**20),
    "method.*_iters": Range(0, MAX_INT),
    "method.*_epoch": Range(0, MAX_INT),
    "method.momentum": Range(0, 1, high_open=True),  # MoCo / DINO EMA start (a schedule may end at 1)
    "method.*momentum": FRACTION,
}


def allowed_range(key: str) -> Range | None:
    """The declared range of a dotted key: an exact entry of RANGES, else the first matching pattern."""
    if key in RANGES:
        return RANGES[key]
    return next((r for pattern, r in RANGES.items() if "*" in pattern and fnmatch.fnmatchcase(key, pattern)), None)


def check_value(key: str, value) -> None:
    """Check one value (recursing into tables and lists) against the generic rules and RANGES[key]."""
    if isinstance(value, dict):
        for name, item in value.items():
            if not isinstance(name, str):
                raise SslAugError(f"recipe key '{key}' has a non-text key {name!r}")
            check_value(f"{key}.{name}" if key else name, item)
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_value(f"{key}[{i}]", item)
        return
    if isinstance(value, str):
        _check_text(key, value)
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    allowed = allowed_range(key)
    if isinstance(value, float) and not math.isfinite(value):
        raise SslAugError(f"recipe key '{key}' must be a finite number ({allowed or 'any finite number'}), got {value}")
    if allowed is not None:
        if not allowed.contains(value):
            raise SslAugError(f"recipe key '{key}' must be {allowed}, got {value}")
    elif isinstance(value, int) and abs(value) > MAX_INT:
        raise SslAugError(f"recipe key '{key}' = {value} is out of range (|value| <= {MAX_INT})")


def _check_text(key: str, value: str) -> None:
    if "\x00" in value:
        raise SslAugError(f"recipe key '{key}' = {value!r} contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # surrogates: bytes that were not UTF-8 (a command-line argument, a file name)
        raise SslAugError(f"recipe key '{key}' = {value!r} is not valid UTF-8 text") from None


def check_option_types(section: str, values: dict, defaults: dict) -> None:
    """Free-form options (e.g. a method's keyword arguments) against the types of their defaults: an int
    default takes only integers, a float default any number, a bool default only true/false, a tuple
    or list default a list; defaults of None take anything. Then the generic checks of each value."""
    kinds = ((bool, lambda v: isinstance(v, bool), "true or false"),
             (int, lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
             (float, lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number"),
             ((tuple, list), lambda v: isinstance(v, (list, tuple)), "a list"),
             (str, lambda v: isinstance(v, str), "text"))
    def check(key: str, value, default) -> None:
        for kind, ok, words in kinds:
            if isinstance(default, kind):
                if not ok(value):
                    raise SslAugError(f"recipe key '{key}' must be {words} (default {default!r}), "
                                      f"got {value!r} ({type(value).__name__})")
                if isinstance(default, (tuple, list)) and default:  # elements: the type of the first default
                    for i, item in enumerate(value):
                        check(f"{key}[{i}]", item, default[0])
                return

    for name, value in values.items():
        check(f"{section}.{name}", value, defaults.get(name))
        check_value(f"{section}.{name}", value)


def check_recipe_values(cfg) -> None:
    """Walk every field of a Config (dataclass sections and free-form tables) and check each value."""

    def walk(node, prefix: str) -> None:
        for f in dataclasses.fields(node):
            value = getattr(node, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, f"{prefix}{f.name}.")
            else:
                check_value(prefix + f.name, value)

    walk(cfg, "")
