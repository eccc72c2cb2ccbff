"""The search space: recipe keys -> ranges or choices, and on/off switches of registered ops.

Spec form (the [space] table of a search TOML; every key is checked against the base recipe):

    [space]
    "augment.scale.0" = { low = 0.05, high = 0.6 }          # float range (element 0 of the list `scale`)
    "augment.grayscale_p" = { low = 0.0, high = 0.5 }
    "augment.color_jitter.strength" = { low = 0.0, high = 1.5 }  # SimCLR strength s: (0.8s, 0.8s, 0.8s, 0.2s)
    "train.lr" = { low = 1e-4, high = 1e-2, log = true }
    "augment.multicrop.local_views" = { low = 0, high = 4 }  # integers -> an integer range
    "augment.auto_augment" = { choices = ["none", "randaugment"] }  # "none" means no value (None)
    "op.blur" = { on = { p = 0.5, sigma = [0.1, 2.0] } }     # on/off of a registered op (on: its settings)
    "op.kornia.RandomErasing" = { on = { p = 0.5 } }         # on/off of a kornia op (appended to augment.kornia)

A point of the space is {key: value} (float, int, choice, or bool for switches); `apply_point` turns it
into a recipe dict. Unknown keys or ops, empty or inverted ranges and unusable values are one-line
SslAugErrors raised by `parse_space`, before anything is written.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

from ssl_aug.config import Config, config_from_dict
from ssl_aug.errors import SslAugError

__all__ = ["Param", "parse_space", "apply_point", "base_point", "DERIVED"]

JITTER_KEY = "augment.color_jitter.strength"
DERIVED = {JITTER_KEY: "colour jitter strength s: brightness/contrast/saturation 0.8s, hue 0.2s (SimCLR)"}


@dataclass
class Param:
    """One dimension: kind "float" | "int" | "choice" | "switch"."""
    key: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    choices: list = field(default_factory=list)
    on: dict = field(default_factory=dict)  # switch: the op's settings when on

    def values(self) -> list:
        """Representative values (the ends of a range, every choice, both switch states)."""
        if self.kind in ("float", "int"):
            return [self.low, self.high]
        return list(self.choices) if self.kind == "choice" else [True, False]

    def suggest(self, trial) -> Any:
        """Ask an Optuna trial for this dimension's value."""
        if self.kind == "float":
            return trial.suggest_float(self.key, self.low, self.high, log=self.log)
        if self.kind == "int":
            return trial.suggest_int(self.key, self.low, self.high, log=self.log)
        return trial.suggest_categorical(self.key, self.choices if self.kind == "choice" else [True, False])


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _parse_param(key: str, table) -> Param:
    if not isinstance(key, str) or not key or key.startswith(".") or key.endswith("."):
        raise SslAugError(f"search space parameter {key!r} is not a dotted recipe key (e.g. augment.grayscale_p)")
    if not isinstance(table, dict):
        raise SslAugError(f"search space parameter '{key}' = {table!r} is not allowed; use a table "
                          "{ low = A, high = B }, { choices = [...] } or, for op.NAME, { on = {...} }")
    if key.startswith("op."):
        from ssl_aug.augment.ops import OPS

        name = key[3:]
        if not (name in OPS or name.startswith("kornia.")) or name == "kornia":
            raise SslAugError(f"search space: unknown op {name!r} in '{key}'; registered ops: "
                              f"{', '.join(o for o in OPS if o != 'kornia')}, or kornia.<kornia.augmentation op>")
        extra = sorted(set(table) - {"on"})
        on = table.get("on", {})
        if extra or not isinstance(on, dict):
            raise SslAugError(f"search space switch '{key}' allows only {{ on = {{...}} }} (the op's settings "
                              f"when on), got {table!r}")
        return Param(key, "switch", on=dict(on))
    if "choices" in table:
        extra = sorted(set(table) - {"choices"})
        choices = table["choices"]
        if extra:
            raise SslAugError(f"search space parameter '{key}': key {extra[0]!r} is not allowed with choices; "
                              "use { choices = [...] } alone")
        if not isinstance(choices, list) or not choices:
            raise SslAugError(f"search space parameter '{key}': choices = {choices!r} is empty; give a non-empty list")
        if any(not (_number(c) or isinstance(c, (str, bool))) for c in choices) or len(set(map(repr, choices))) < len(choices):
            raise SslAugError(f"search space parameter '{key}': choices = {choices!r} must be distinct numbers, "
                              "strings or booleans (\"none\" for no value)")
        return Param(key, "choice", choices=list(choices))
    extra = sorted(set(table) - {"low", "high", "log"})
    if extra or "low" not in table or "high" not in table:
        raise SslAugError(f"search space parameter '{key}' = {table!r} is not allowed; use "
                          "{ low = A, high = B [, log = true] } or { choices = [...] }")
    low, high, log = table["low"], table["high"], table.get("log", False)
    if not (_number(low) and _number(high)) or not isinstance(log, bool):
        raise SslAugError(f"search space parameter '{key}': low = {low!r}, high = {high!r} must be numbers "
                          f"(log = {log!r} a boolean)")
    if low > high:
        raise SslAugError(f"search space parameter '{key}': inverted range low = {low} > high = {high}; "
                          "give low < high")
    if low == high:
        raise SslAugError(f"search space parameter '{key}': empty range low = high = {low}; give low < high "
                          "(or set the value in base_overrides)")
    if log and low <= 0:
        raise SslAugError(f"search space parameter '{key}': log range needs low > 0, got {low}")
    kind = "int" if isinstance(low, int) and isinstance(high, int) else "float"
    return Param(key, kind, low=low if kind == "int" else float(low), high=high if kind == "int" else float(high),
                 log=log)


def _plain(value):
    return None if value == "none" else value


def _set(data: dict, key: str, value) -> None:
    """data[a][b]... = value for 'a.b...'; a numeric last part indexes a list (augment.scale.0)."""
    parts = key.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part) if isinstance(node, dict) else None
        if child is None:
            child = node[part] = {}
        if not isinstance(child, (dict, list)):
            raise SslAugError(f"search space parameter '{key}': '{'.'.join(parts[:i + 1])}' is a value "
                              f"({child!r}), not a table")
        node = child
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise SslAugError(f"search space parameter '{key}': index {last!r} is outside the list of "
                              f"{len(node)} values")
        node[int(last)] = value
    else:
        node[last] = value


def _get(data: dict, key: str, default=None):
    node = data
    for part in key.split("."):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return default
    return node


def _switch(augment: dict, name: str, on: bool, settings: dict) -> None:
    from ssl_aug.augment.ops import OPS

    if name.startswith("kornia."):
        op_name = name[len("kornia."):]
        entries = [e for e in augment.get("kornia") or [] if not (isinstance(e, dict) and e.get("op") == op_name)]
        augment["kornia"] = entries + ([{"op": op_name, **settings}] if on else [])
        return
    op = OPS[name]
    changes = copy.deepcopy(settings if on else op.off())
    if op.nested and on:
        changes = {name: changes}
    for k, v in changes.items():
        if isinstance(v, dict) and isinstance(augment.get(k), dict):
            augment[k] = {**augment[k], **v}
        else:
            augment[k] = v


def apply_point(base: dict, params: list[Param], point: dict) -> dict:
    """A copy of the recipe dict `base` with the point's values set (switches and derived keys expanded)."""
    data = copy.deepcopy(base)
    for p in params:
        if p.key not in point:
            continue
        value = _plain(point[p.key])
        if p.kind == "switch":
            _switch(data.setdefault("augment", {}), p.key[3:], bool(value), p.on)
        elif p.key == JITTER_KEY:
            s = float(value)
            cj = data.setdefault("augment", {}).get("color_jitter")
            cj = dict(cj) if isinstance(cj, dict) else {}
            cj.update(brightness=round(0.8 * s, 10), contrast=round(0.8 * s, 10), saturation=round(0.8 * s, 10),
                      hue=min(round(0.2 * s, 10), 0.5))
            data["augment"]["color_jitter"] = cj
        else:
            _set(data, p.key, value)
    return data


def _check_key(key: str, base: dict) -> None:
    """Non-augment keys must be recipe keys (or keys the base recipe's free-form tables already have)."""
    parts = key.split(".")
    if parts[0] in ("augment", "op") or key in DERIVED:
        return  # checked by building the views
    known = Config().to_dict()
    for top, table in base.items():
        if isinstance(table, dict) and isinstance(known.get(top), dict):
            known[top] = {**known[top], **table}
    node = known
    for i, part in enumerate(parts):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
            continue
        if not isinstance(node, dict) or part not in node:
            where = ".".join(parts[:i]) or "top level"
            valid = sorted(node) if isinstance(node, dict) else []
            raise SslAugError(f"search space: unknown parameter '{key}'; keys under {where}: {', '.join(valid)}")
        node = node[part]
    if isinstance(node, dict):
        raise SslAugError(f"search space parameter '{key}' is a table; name one of its keys: {', '.join(node)}")


def parse_space(space, base: dict) -> list[Param]:
    """[space] table + base recipe dict -> validated parameters (each representative value builds a valid
    config and views)."""
    from ssl_aug.augment.recipe import views_of

    if not isinstance(space, dict) or not space:
        raise SslAugError("search spec needs a non-empty [space] table: \"dotted.recipe.key\" = { low = A, high = B }")
    params = [_parse_param(k, v) for k, v in space.items()]
    for p in params:
        _check_key(p.key, base)
        if p.key == "augment.auto_augment" and p.kind != "choice":
            raise SslAugError("search space parameter 'augment.auto_augment' needs { choices = [\"none\", "
                              "\"randaugment\", \"autoaugment\"] } (RandAugment N and M: augment.randaugment_n, "
                              "augment.randaugment_m)")
        for value in p.values():
            try:
                cfg = config_from_dict(apply_point(base, [p], {p.key: value}))
                views_of(cfg).build()
            except SslAugError as exc:
                raise SslAugError(f"search space parameter '{p.key}' = {value!r}: {exc}") from None
    return params


def base_point(base: dict, params: list[Param]) -> dict | None:
    """The base recipe as a point of the space (for a first, reference trial), or None when some value of
    the base lies outside the space."""
    from ssl_aug.augment.recipe import views_of

    point = {}
    spec = views_of(config_from_dict(base)).specs[0]
    for p in params:
        if p.kind == "switch":
            name = p.key[3:]
            if name.startswith("kornia."):
                value = any(isinstance(e, dict) and e.get("op") == name[7:] for e in base.get("augment", {}).get("kornia") or [])
            else:
                cfg = spec.cfg(name)
                from ssl_aug.augment.ops import OPS
                value = bool(OPS[name].active(cfg))
        elif p.key == JITTER_KEY:
            cj = spec.cfg("color_jitter")
            b = cj.brightness
            value = round((b[1] - 1.0) / 0.8 if isinstance(b, tuple) else float(b) / 0.8, 10)
        else:
            value = _get(base, p.key, _get(Config().to_dict(), p.key))
            if value is None and p.key.startswith("augment.multicrop."):
                import dataclasses
                from ssl_aug.config import MultiCropConfig
                value = _get(dataclasses.asdict(MultiCropConfig()), p.key[len("augment.multicrop."):])
            elif value is None and p.key.startswith("augment."):
                value = _get(spec.to_dict(), p.key[len("augment."):])
            if p.kind == "choice" and value is None:
                value = "none"
        if p.kind in ("float", "int"):
            if not _number(value) or not p.low <= value <= p.high:
                return None
            value = int(value) if p.kind == "int" else float(value)
        elif p.kind == "choice" and value not in p.choices:
            return None
        point[p.key] = value
    if any(isinstance(v, float) and math.isnan(v) for v in point.values()):
        return None
    return point
