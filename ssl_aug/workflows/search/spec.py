"""Search specs: a base recipe, a search space, an objective and a trial budget (TOML).

    description = "..."
    base = "quickstart"              # recipe name or path (relative to the spec's folder)
    output_dir = "runs/search_quickstart"
    trials = 30                      # finished (complete + pruned + failed) trials to reach
    objective = "knn_val"            # knn_val | align_uniform | rotation (see objectives.py)
    validation = 1000                # images carved from the training split to score trials on
    seed = 0
    compare_seeds = 3                # best policy vs the base recipe on the test split (0 = skip)
    [base_overrides]                 # every trial's budget, e.g. "train.epochs" = 4
    [pruner]                         # name = "successive_halving" | "hyperband" | "none", min_resource,
                                     # reduction_factor
    [sampler]                        # TPE: n_startup_trials
    [space]                          # see space.py
    strategy = "tpe"                 # "tpe" (Optuna trials over [space]) | "tanda": a learned TF sequence
    [tanda]                          # strategy "tanda" (no [space]): length, m, steps, lr, seed, ... (tanda.py)

`load_search` validates all of it (space values build configs and views, objective vs labels needs the
data and is checked by the study) and writes nothing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ssl_aug.config import apply_overrides, config_from_dict, read_toml, resolve_recipe_path
from ssl_aug.errors import SslAugError
from ssl_aug.registry import check_keys
from ssl_aug.workflows.search.objectives import OBJECTIVES
from ssl_aug.workflows.search.space import Param, parse_space
from ssl_aug.workflows.search.tanda import check_tanda

__all__ = ["SearchSpec", "load_search", "SPEC_KEYS", "PRUNERS", "spec_hash"]

SPEC_KEYS = ("description", "base", "output_dir", "trials", "objective", "validation", "seed", "compare_seeds",
             "base_overrides", "pruner", "sampler", "space", "strategy", "tanda")
PRUNERS = ("successive_halving", "hyperband", "none")
PRUNER_KEYS = ("name", "min_resource", "reduction_factor")
SAMPLER_KEYS = ("n_startup_trials",)
STRATEGIES = ("tpe", "tanda")


@dataclass
class SearchSpec:
    path: Path
    raw: dict            # the spec as parsed (overrides applied)
    base: dict           # the base recipe dict with base_overrides applied (the trials' budget)
    params: list[Param]
    out_dir: Path

    def get(self, key: str, default=None):
        return self.raw.get(key, default)

    @property
    def epochs(self) -> int:
        return config_from_dict(self.base).train.epochs


def _int(name: str, value, low: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise SslAugError(f"search spec: {name} = {value!r} is not allowed; use an integer >= {low}")
    return value


def spec_hash(raw: dict, base: dict) -> str:
    """What a resumed search must match (output_dir, trials and compare_seeds may change)."""
    data = {k: v for k, v in raw.items() if k not in ("output_dir", "trials", "compare_seeds", "description")}
    data["base"] = {k: v for k, v in base.items() if k != "output_dir"}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def load_search(spec: str | Path | dict, overrides: list[str] = (), validate: bool = True) -> SearchSpec:
    """Search TOML (path, shipped name, or an already parsed dict with '_path') + `key=value` overrides
    (`base.KEY=V` go to the base recipe) -> a validated SearchSpec."""
    if isinstance(spec, dict):
        raw, path = dict(spec), Path(spec.get("_path", "search.toml"))
        raw.pop("_path", None)
    else:
        path = resolve_recipe_path(spec)
        raw = dict(read_toml(path))
    raw = apply_overrides(raw, [o for o in overrides if not o.startswith("base.")])
    base_extra = [o[len("base."):] for o in overrides if o.startswith("base.")]
    check_keys(sorted(raw), list(SPEC_KEYS), "search spec key", "", f" in {path}")
    if not isinstance(raw.get("base"), (str, dict)):
        raise SslAugError(f"search spec {path} needs a 'base' recipe (a recipe name or a TOML path)")
    if isinstance(raw["base"], dict):
        base = dict(raw["base"])
    else:
        candidate = path.parent / raw["base"]
        base = read_toml(candidate if candidate.is_file() else resolve_recipe_path(raw["base"]))
    base = apply_overrides(base, dict(raw.get("base_overrides") or {}))
    base = apply_overrides(base, base_extra)
    try:
        cfg = config_from_dict(base)
    except SslAugError as exc:
        raise SslAugError(f"search base recipe: {exc}") from None
    if cfg.train.max_steps:
        raise SslAugError(f"search base recipe: train.max_steps = {cfg.train.max_steps} is not allowed; trials are "
                          "budgeted in epochs (set train.epochs, train.max_steps = 0)")
    objective = raw.setdefault("objective", "knn_val")
    if objective not in OBJECTIVES:
        raise SslAugError(f"search objective {objective!r} is not allowed; choose one of: {', '.join(OBJECTIVES)}")
    _int("trials", raw.setdefault("trials", 20), 1)
    _int("seed", raw.setdefault("seed", 0), 0)
    _int("compare_seeds", raw.setdefault("compare_seeds", 0), 0)
    _int("validation", raw.setdefault("validation", 1000), 8)
    pruner = raw.setdefault("pruner", {})
    if not isinstance(pruner, dict) or set(pruner) - set(PRUNER_KEYS):
        raise SslAugError(f"search [pruner] = {pruner!r} is not allowed; keys: {', '.join(PRUNER_KEYS)}")
    if pruner.setdefault("name", "successive_halving") not in PRUNERS:
        raise SslAugError(f"search pruner {pruner['name']!r} is not allowed; choose one of: {', '.join(PRUNERS)}")
    _int("pruner.min_resource", pruner.setdefault("min_resource", 1), 1)
    _int("pruner.reduction_factor", pruner.setdefault("reduction_factor", 3), 2)
    sampler = raw.setdefault("sampler", {})
    if not isinstance(sampler, dict) or set(sampler) - set(SAMPLER_KEYS):
        raise SslAugError(f"search [sampler] = {sampler!r} is not allowed; keys: {', '.join(SAMPLER_KEYS)}")
    _int("sampler.n_startup_trials", sampler.setdefault("n_startup_trials", 8), 0)
    strategy = raw.get("strategy", "tpe")  # not written into raw: the hash of existing TPE searches stays
    if strategy not in STRATEGIES:
        raise SslAugError(f"search strategy {strategy!r} is not allowed; choose one of: {', '.join(STRATEGIES)}")
    if strategy == "tanda":
        if raw.get("space"):
            raise SslAugError("search spec: [space] is not used by strategy = \"tanda\" (it learns a TF sequence); "
                              "remove [space] or use strategy = \"tpe\"")
        raw["tanda"] = check_tanda(raw.get("tanda"), raw["seed"])
        params = []
    elif "tanda" in raw:
        raise SslAugError("search spec: [tanda] is only used with strategy = \"tanda\"; remove it or set the strategy")
    else:
        params = parse_space(raw.get("space"), base) if validate else _unchecked(raw.get("space"), base)
    out_dir = Path(raw.get("output_dir") or f"runs/{path.stem}")
    if out_dir.exists() and not out_dir.is_dir():
        raise SslAugError(f"search output_dir {out_dir} is a file, not a folder; give a folder path")
    return SearchSpec(path, raw, base, params, out_dir)


def _unchecked(space: dict, base: dict) -> list[Param]:
    from ssl_aug.workflows.search.space import _parse_param

    return [_parse_param(k, v) for k, v in space.items()]
