"""The schedule contract: any scalar hyperparameter of a method or the optimiser may follow a schedule
declared in the recipe, as a pure function of the optimiser step (so a resumed run gets the same values).

Recipe form: a table in place of a number (`[method]` keys, `train.weight_decay`, `train.momentum`), or
the same table under `[schedules]` with the dotted key:

    [method]
    momentum = {schedule = "cosine", start = 0.996, end = 1.0}            # over the whole run
    teacher_temperature = {schedule = "linear", start = 0.04, end = 0.07, epochs = 30}

Fields: `schedule` (a registered name), `start`, `end` (default: start), `epochs` (the span from step 0;
default the whole run; afterwards the value holds `end`), `warmup_epochs` (first a linear ramp from
`warmup_start`, default 0, to `start`), plus the schedule's own keyword options (e.g. step's
`milestones`, `gamma`). A schedule is one function `f(t, start, end, **options) -> value` of the progress
t in [0, 1] over its span, registered with `@register_schedule("name")`.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Callable

from ssl_aug.errors import SslAugError
from ssl_aug.registry import Registry, check_keys

__all__ = ["SCHEDULES", "register_schedule", "list_schedules", "get_schedule", "Schedule", "parse_schedule",
           "split_schedules", "COMMON_KEYS"]

SCHEDULES = Registry("schedule")
register_schedule = SCHEDULES.register
COMMON_KEYS = ("schedule", "start", "end", "epochs", "warmup_epochs", "warmup_start")


def list_schedules() -> list[str]:
    return SCHEDULES.names()


def get_schedule(name: str) -> Callable[..., float]:
    return SCHEDULES.get(name)


def _number(key: str, name: str, value, minimum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SslAugError(f"schedule of '{key}': {name} = {value!r} must be a finite number")
    if minimum is not None and value < minimum:
        raise SslAugError(f"schedule of '{key}': {name} = {value!r} must be >= {minimum:g}")
    return float(value)


@dataclass
class Schedule:
    """One key's schedule. `at(step, steps_per_epoch, total_steps)` -> the value before optimiser step
    `step` (0-based)."""

    key: str
    name: str
    start: float
    end: float
    epochs: float | None = None
    warmup_epochs: float = 0.0
    warmup_start: float = 0.0
    options: dict = field(default_factory=dict)

    def at(self, step: int, steps_per_epoch: int, total_steps: int) -> float:
        warm = int(round(self.warmup_epochs * steps_per_epoch))
        if step < warm:
            return self.warmup_start + (self.start - self.warmup_start) * step / warm
        stop = total_steps if self.epochs is None else min(total_steps, int(round(self.epochs * steps_per_epoch)))
        t = min(max((step - warm) / max(stop - warm, 1), 0.0), 1.0)
        return float(get_schedule(self.name)(t, self.start, self.end, **self.options))

    def to_dict(self) -> dict:
        out = {"schedule": self.name, "start": self.start, "end": self.end, **self.options}
        if self.epochs is not None:
            out["epochs"] = self.epochs
        if self.warmup_epochs:
            out.update(warmup_epochs=self.warmup_epochs, warmup_start=self.warmup_start)
        return out


def parse_schedule(key: str, table: dict) -> Schedule:
    """A recipe table {schedule, start, ...} -> Schedule (one-line errors naming the key)."""
    if not isinstance(table, dict) or not isinstance(table.get("schedule"), str):
        raise SslAugError(f"schedule of '{key}' must be a table with schedule = one of: "
                          f"{', '.join(list_schedules())}; got {table!r}")
    fn = get_schedule(table["schedule"])
    own = [p for p in inspect.signature(fn).parameters if p not in ("t", "start", "end")]
    check_keys(table, list(COMMON_KEYS) + own, f"schedule of '{key}': key '")
    if "start" not in table:
        raise SslAugError(f"schedule of '{key}' needs a start value, e.g. start = 0.996")
    start = _number(key, "start", table["start"])
    end = _number(key, "end", table.get("end", start))
    epochs = table.get("epochs")
    if epochs is not None and _number(key, "epochs", epochs) <= 0:
        raise SslAugError(f"schedule of '{key}': epochs = {epochs!r} must be > 0")
    options = {k: table[k] for k in own if k in table}
    sched = Schedule(key, table["schedule"], start, end, None if epochs is None else float(epochs),
                     _number(key, "warmup_epochs", table.get("warmup_epochs", 0.0), 0.0),
                     _number(key, "warmup_start", table.get("warmup_start", 0.0)), options)
    sched.at(0, 1, 2), sched.at(1, 1, 2)  # bad options fail now, in one line, not at the first step
    return sched


def split_schedules(section: dict, prefix: str, keys=None) -> tuple[dict, dict[str, dict]]:
    """Pull scheduled keys out of a recipe section: -> (section with each table replaced by its start
    value, {"prefix.key": table}). `keys`: the only keys that may be scheduled (None: any)."""
    plain, tables = dict(section), {}
    for key, value in section.items():
        if isinstance(value, dict) and "schedule" in value:
            if keys is not None and key not in keys:
                raise SslAugError(f"recipe key '{prefix}.{key}' cannot follow a schedule; schedulable in "
                                  f"[{prefix}]: {', '.join(keys)}")
            sched = parse_schedule(f"{prefix}.{key}", value)
            plain[key] = sched.start if not sched.warmup_epochs else sched.warmup_start
            tables[f"{prefix}.{key}"] = value
    return plain, tables
