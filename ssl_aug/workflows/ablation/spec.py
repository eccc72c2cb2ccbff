"""Ablation specs: a base recipe plus axes (or named cells) of overrides -> planned runs.

Spec (TOML):
    description = "..."
    base = "quickstart"                  # recipe name or path (relative to the spec's folder)
    mode = "cells"                       # "cells" | "one_at_a_time" | "grid"
    seeds = 2
    output_dir = "runs/ablate_color"
    [base_overrides]                     # applied to every run
    "train.epochs" = 3
    [axes]                               # one_at_a_time / grid
    "augment.color_jitter.p" = [0.0, 0.8]
    [cells.no_color_jitter]              # cells: name -> overrides (an empty table = the base)
    "augment.color_jitter.p" = 0.0
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ssl_aug.config import (Config, apply_overrides, config_from_dict, read_toml, resolve_recipe_path,
                            set_dotted)
from ssl_aug.errors import SslAugError
from ssl_aug.registry import check_keys

__all__ = ["Run", "SPEC_KEYS", "MODES", "load_spec", "base_recipe", "plan_cells", "plan_runs", "config_hash",
           "is_ablation_spec"]

MAX_SEEDS = 1000  # seeds per cell: each is a full training run
SPEC_KEYS = ("description", "base", "mode", "seeds", "output_dir", "base_overrides", "axes", "cells", "metrics")
MODES = ("cells", "one_at_a_time", "grid")


@dataclass
class Run:
    """One (cell, seed) of an ablation: its overrides, folder, resolved config and its hash."""
    cell: str
    seed: int
    overrides: dict
    run_dir: Path
    config: Config | None = None
    config_hash: str = ""
    results: dict = field(default_factory=dict)
    error: str | None = None
    skipped: bool = False


def is_ablation_spec(data: dict) -> bool:
    """True for a parsed TOML that is an ablation spec (a 'base' plus cells or axes), not a recipe."""
    return isinstance(data.get("base"), str) and ("cells" in data or "axes" in data)


def config_hash(config: Config) -> str:
    """sha256 of the resolved config (output_dir left out: the run folder is the cell's name)."""
    data = config.to_dict()
    data.pop("output_dir", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", text).strip("_") or "base"


def _fmt(value) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


def load_spec(spec: str | Path, overrides: list[str] = ()) -> tuple[dict, Path]:
    """(spec dict with overrides applied, spec path); `base.KEY=V` overrides go to the base recipe."""
    path = resolve_recipe_path(spec)
    top = dict(read_toml(path))
    top = apply_overrides(top, [o for o in overrides if not o.startswith("base.")])
    base_extra = {o.split("=", 1)[0][len("base."):]: o.split("=", 1)[1] for o in overrides if o.startswith("base.")}
    unknown = set(top) - set(SPEC_KEYS)
    hint = "; this is a training recipe: use ssl-aug train" if {"data", "model", "train"} & unknown else ""
    check_keys(sorted(top), list(SPEC_KEYS), "ablation key", "", f" in {path}{hint}")
    if top.get("mode", "cells") not in MODES:
        raise SslAugError(f"ablation mode {top.get('mode')!r} is not allowed; choose one of: {', '.join(MODES)}")
    if "base" not in top:
        raise SslAugError(f"ablation spec {path} needs a 'base' recipe (a recipe name or a TOML path)")
    top["_base_extra"] = base_extra
    return top, path


def base_recipe(spec: dict, spec_path: Path) -> dict:
    """The base recipe as a dict, with the spec's base_overrides and `base.*` overrides applied."""
    base = spec["base"]
    candidate = spec_path.parent / base
    path = candidate if candidate.is_file() else resolve_recipe_path(base)
    data = read_toml(path)
    data = apply_overrides(data, dict(spec.get("base_overrides", {})))
    return apply_overrides(data, [f"{k}={v}" for k, v in spec["_base_extra"].items()])


def _check_key(key: str) -> None:
    """Fail early, with the valid keys, when an axis key is not a recipe key (free-form tables:
    method.*, augment.* and *.options / *_args are checked by building the config)."""
    parts = key.split(".")
    if parts[0] in ("method", "augment") or any(p in ("options", "backbone_args") for p in parts[:-1]):
        return
    node = Config().to_dict()
    for i, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            valid = sorted(node) if isinstance(node, dict) else []
            where = ".".join(parts[:i]) or "top level"
            raise SslAugError(f"ablation axis key '{key}' is not a recipe key; valid keys under {where}: "
                              f"{', '.join(valid)}")
        node = node[part]


def plan_cells(spec: dict) -> list[tuple[str, dict]]:
    """(cell name, overrides) pairs in the order they are run and reported."""
    mode = spec.get("mode", "cells")
    if mode == "cells":
        cells = spec.get("cells")
        if not cells:
            raise SslAugError("ablation mode 'cells' needs a [cells.NAME] table per cell")
        plan = [(name, dict(overrides)) for name, overrides in cells.items()]
    else:
        axes = spec.get("axes")
        if not axes:
            raise SslAugError(f"ablation mode '{mode}' needs an [axes] table: \"dotted.key\" = [values]")
        for key, values in axes.items():
            if not isinstance(values, list) or not values:
                raise SslAugError(f"ablation axis '{key}' must be a non-empty list of values, got {values!r}")
        if mode == "grid":
            keys = list(axes)
            plan = [(", ".join(f"{k}={_fmt(v)}" for k, v in zip(keys, combo)), dict(zip(keys, combo)))
                    for combo in itertools.product(*axes.values())]
        else:
            plan = [("base", {})]
            for key, values in axes.items():
                plan += [(f"{key}={_fmt(v)}", {key: v}) for v in values]
    for _, overrides in plan:
        for key in overrides:
            _check_key(key)
    return plan


def plan_runs(spec: dict, spec_path: Path) -> list[Run]:
    """Every (cell, seed) run with its validated config (views built once to check [augment])."""
    from ssl_aug.augment.recipe import views_of

    base = base_recipe(spec, spec_path)
    out = Path(spec.get("output_dir") or f"runs/{spec_path.stem}")
    seeds = spec.get("seeds", 1)
    if not isinstance(seeds, int) or isinstance(seeds, bool) or not 1 <= seeds <= MAX_SEEDS:
        raise SslAugError(f"ablation seeds must be an integer from 1 to {MAX_SEEDS}, got {seeds!r}")
    runs = []
    for cell, overrides in plan_cells(spec):
        for seed in range(seeds):
            run_dir = out / _slug(cell) / f"seed{seed}"
            data = apply_overrides(base, overrides)
            set_dotted(data, "seed", int(base.get("seed", 0)) + seed)
            set_dotted(data, "output_dir", str(run_dir))
            try:
                config = config_from_dict(data)
                views_of(config).build()  # validates the augment table before anything trains
            except SslAugError as exc:
                raise SslAugError(f"ablation cell '{cell}': {exc}") from None
            runs.append(Run(cell, seed, overrides, run_dir, config, config_hash(config)))
    return runs
