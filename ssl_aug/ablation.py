"""Ablation runner: a base recipe plus axes (or named cells) of overrides -> one run per cell and
seed -> a results table (Markdown + CSV, mean ± std over seeds) and plots.

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

The runner is resumable: a run whose eval.json exists is skipped, an interrupted run resumes from its
last checkpoint, and a failed run is recorded (error.txt) while the others go on.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import re
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from ssl_aug.config import (Config, apply_overrides, config_from_dict, read_toml, resolve_recipe_path,
                            set_dotted)
from ssl_aug.errors import SslAugError

SPEC_KEYS = ("description", "base", "mode", "seeds", "output_dir", "base_overrides", "axes", "cells", "metrics")
MODES = ("cells", "one_at_a_time", "grid")
DEFAULT_METRICS = ("knn_top1", "linear_top1", "train_time_s")


@dataclass
class Run:
    cell: str
    seed: int
    overrides: dict
    run_dir: Path
    config: Config | None = None
    results: dict = field(default_factory=dict)
    error: str | None = None
    skipped: bool = False


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", text).strip("_") or "base"


def _fmt(value) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


def load_spec(spec: str | Path, overrides: list[str] = ()) -> tuple[dict, Path]:
    path = resolve_recipe_path(spec)
    data = read_toml(path)
    top = {k: v for k, v in data.items()}
    top = apply_overrides(top, [o for o in overrides if not o.startswith("base.")])
    base_extra = {o.split("=", 1)[0][len("base."):]: o.split("=", 1)[1] for o in overrides if o.startswith("base.")}
    unknown = sorted(set(top) - set(SPEC_KEYS))
    if unknown:
        raise SslAugError(f"unknown ablation key '{unknown[0]}' in {path}; allowed: {', '.join(SPEC_KEYS)}")
    if top.get("mode", "cells") not in MODES:
        raise SslAugError(f"ablation mode {top.get('mode')!r} is not allowed; choose one of: {', '.join(MODES)}")
    if "base" not in top:
        raise SslAugError(f"ablation spec {path} needs a 'base' recipe (a recipe name or a TOML path)")
    top["_base_extra"] = base_extra
    return top, path


def _base_recipe(spec: dict, spec_path: Path) -> dict:
    base = spec["base"]
    candidate = spec_path.parent / base
    path = candidate if candidate.is_file() else resolve_recipe_path(base)
    data = read_toml(path)
    data = apply_overrides(data, dict(spec.get("base_overrides", {})))
    return apply_overrides(data, [f"{k}={v}" for k, v in spec["_base_extra"].items()])


def _check_key(base: dict, key: str) -> None:
    """Fail early, with the valid keys, when an axis key is not a recipe key (free-form tables:
    method.*, augment.* and *.options / *_args are checked by building the config)."""
    parts = key.split(".")
    free = {"method", "augment"}
    if parts[0] in free or any(p in ("options", "backbone_args") for p in parts[:-1]):
        return
    defaults = Config().to_dict()
    node = defaults
    for i, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            valid = sorted(node) if isinstance(node, dict) else []
            where = ".".join(parts[:i]) or "top level"
            raise SslAugError(f"ablation axis key '{key}' is not a recipe key; valid keys under {where}: "
                              f"{', '.join(valid)}")
        node = node[part]


def plan_cells(spec: dict, base: dict) -> list[tuple[str, dict]]:
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
            _check_key(base, key)
    return plan


def plan_runs(spec: dict, spec_path: Path) -> list[Run]:
    base = _base_recipe(spec, spec_path)
    out = Path(spec.get("output_dir") or f"runs/{spec_path.stem}")
    seeds = int(spec.get("seeds", 1))
    if seeds < 1:
        raise SslAugError(f"ablation seeds must be >= 1, got {seeds}")
    runs = []
    for cell, overrides in plan_cells(spec, base):
        for seed in range(seeds):
            run_dir = out / _slug(cell) / f"seed{seed}"
            data = apply_overrides(base, overrides)
            set_dotted(data, "seed", int(base.get("seed", 0)) + seed)
            set_dotted(data, "output_dir", str(run_dir))
            try:
                config = config_from_dict(data)
                from ssl_aug.train import build_views

                build_views(config.augment)  # validates the augment table before anything trains
            except SslAugError as exc:
                raise SslAugError(f"ablation cell '{cell}': {exc}") from None
            runs.append(Run(cell, seed, overrides, run_dir, config))
    return runs


def execute(runs: list[Run], progress: bool = True) -> None:
    from ssl_aug.experiment import run_experiment

    for i, run in enumerate(runs, 1):
        done = run.run_dir / "eval.json"
        if done.is_file():
            run.results, run.skipped = json.loads(done.read_text()), True
            print(f"[{i}/{len(runs)}] {run.cell} seed {run.seed}: done earlier, skipped")
            continue
        print(f"[{i}/{len(runs)}] {run.cell} seed {run.seed} -> {run.run_dir}")
        try:
            run.results = run_experiment(run.config, run.run_dir, resume=True, progress=progress)
            (run.run_dir / "error.txt").unlink(missing_ok=True)
        except (SslAugError, RuntimeError, ValueError) as exc:
            run.error = f"{type(exc).__name__}: {exc}".splitlines()[0]
            run.run_dir.mkdir(parents=True, exist_ok=True)
            (run.run_dir / "error.txt").write_text(run.error + "\n\n" + traceback.format_exc())
            print(f"    failed: {run.error} (recorded in {run.run_dir / 'error.txt'}; continuing)")


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, std


def summarize(runs: list[Run], metrics: list[str] | None = None) -> tuple[list[str], list[dict]]:
    """Per cell: mean and std over seeds of each metric, plus how many seeds finished/failed."""
    cells: dict[str, list[Run]] = {}
    for run in runs:
        cells.setdefault(run.cell, []).append(run)
    found = {k for r in runs for k, v in r.results.items() if isinstance(v, (int, float))}
    metrics = list(metrics or [m for m in DEFAULT_METRICS if m in found])
    metrics += sorted(k for k in found if k.startswith("invariance_") and k not in metrics)
    rows = []
    for cell, members in cells.items():
        row = {"cell": cell, "seeds": sum(r.error is None for r in members),
               "failed": sum(r.error is not None for r in members)}
        for metric in metrics:
            values = [float(r.results[metric]) for r in members if r.error is None and metric in r.results
                      and r.results[metric] is not None]
            row[metric] = _mean_std(values) if values else None
        rows.append(row)
    return metrics, rows


def write_report(runs: list[Run], out_dir: Path, title: str, metrics: list[str] | None = None) -> str:
    metrics, rows = summarize(runs, metrics)
    out_dir.mkdir(parents=True, exist_ok=True)
    header = ["cell", "seeds"] + metrics
    lines = [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["cell"], str(row["seeds"]) + (f" ({row['failed']} failed)" if row["failed"] else "")]
        for m in metrics:
            v = row[m]
            if v is None:
                cells.append("–")
            else:
                digits = 1 if m.endswith("_s") else 3
                cells.append(f"{v[0]:.{digits}f} ± {v[1]:.{digits}f}" if row["seeds"] > 1 else f"{v[0]:.{digits}f}")
        lines.append("| " + " | ".join(cells) + " |")
    failed = [r for r in runs if r.error]
    if failed:
        lines += ["", "Failed runs:"] + [f"- {r.cell} seed {r.seed}: {r.error}" for r in failed]
    table = "\n".join(lines) + "\n"
    (out_dir / "results.md").write_text(table)
    with open(out_dir / "results.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["cell", "seed"] + metrics + ["error"])
        for r in runs:
            writer.writerow([r.cell, r.seed] + [r.results.get(m, "") for m in metrics] + [r.error or ""])
    note = plot_results(rows, metrics, out_dir, title)
    return table + (f"\n{note}\n" if note else "")


def plot_results(rows: list[dict], metrics: list[str], out_dir: Path, title: str) -> str:
    """accuracy.png (accuracy per cell) and invariance.png (invariance per transform per cell)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "(plots skipped: matplotlib is not installed; pip install 'ssl_aug[plot]')"
    names = [r["cell"] for r in rows]
    acc = [m for m in metrics if m.endswith("top1")]
    if acc:
        fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(names)), 3.8))
        width = 0.8 / len(acc)
        for j, m in enumerate(acc):
            means = [r[m][0] if r[m] else 0 for r in rows]
            errs = [r[m][1] if r[m] else 0 for r in rows]
            ax.bar([i + j * width for i in range(len(rows))], means, width, yerr=errs, label=m, capsize=3)
        ax.set_xticks([i + width * (len(acc) - 1) / 2 for i in range(len(rows))], names, rotation=20, ha="right")
        ax.set_ylabel("top-1 accuracy")
        ax.set_ylim(0, 1)
        ax.set_title(title)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / "accuracy.png", dpi=120)
        plt.close(fig)
    inv = [m for m in metrics if m.startswith("invariance_")]
    if inv:
        import numpy as np

        grid = np.array([[r[m][0] if r[m] else np.nan for m in inv] for r in rows])
        fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(inv)), 1 + 0.5 * len(rows)))
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(inv)), [m[len("invariance_"):] for m in inv], rotation=30, ha="right")
        ax.set_yticks(range(len(rows)), names)
        for i in range(grid.shape[0]):
            for j in range(grid.shape[1]):
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", color="w", fontsize=8)
        fig.colorbar(im, ax=ax, label="invariance (1 = identical embedding)")
        ax.set_title(f"{title}: invariance per transform")
        fig.tight_layout()
        fig.savefig(out_dir / "invariance.png", dpi=120)
        plt.close(fig)
    return ""


def run_ablation(spec: str | Path, overrides: list[str] = (), progress: bool = True, dry_run: bool = False) -> list[Run]:
    """Plan, run (skipping finished runs) and report an ablation; returns the runs with results."""
    data, path = load_spec(spec, overrides)
    runs = plan_runs(data, path)
    out_dir = Path(data.get("output_dir") or f"runs/{path.stem}")
    title = data.get("description") or path.stem
    if dry_run:
        for run in runs:
            print(f"{run.cell} seed {run.seed}: {run.run_dir}  overrides {run.overrides}")
        return runs
    execute(runs, progress=progress)
    report = write_report(runs, out_dir, title, data.get("metrics"))
    print("\n" + report)
    print(f"results: {out_dir / 'results.md'}, {out_dir / 'results.csv'}")
    return runs
