"""Ablation reports: per-cell mean ± std over seeds -> results.md (base recipe, budget, each cell's
overrides, metrics), results.csv (one row per run) and the plots; returns every file written."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from ssl_aug.workflows.ablation.spec import Run
from ssl_aug.io import atomic_write_text

__all__ = ["summarize", "write_report", "invariance_order", "DEFAULT_METRICS"]

DEFAULT_METRICS = ("knn_top1", "linear_top1", "train_time_s")


def invariance_order() -> list[str]:
    """Transform families in the invariance probe's own order (geometric, then colour, then the rest),
    without 'identity' (its score is 1 by construction)."""
    from ssl_aug.evaluation.invariance import default_transforms

    return [name for name in default_transforms() if name != "identity"]


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, std


def summarize(runs: list[Run], metrics: list[str] | None = None) -> tuple[list[str], list[dict]]:
    """(metric columns, one row per cell: mean and std over seeds of each metric, seeds finished/failed).

    Invariance columns come in the probe's family order, the constant identity column left out."""
    cells: dict[str, list[Run]] = {}
    for run in runs:
        cells.setdefault(run.cell, []).append(run)
    found = {k for r in runs for k, v in r.results.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    metrics = [m for m in (metrics or [m for m in DEFAULT_METRICS if m in found]) if m != "invariance_identity"]
    order = [f"invariance_{name}" for name in invariance_order()]
    invariance = [m for m in order if m in found] + sorted(
        k for k in found if k.startswith("invariance_") and k not in order and k != "invariance_identity")
    metrics += [m for m in invariance if m not in metrics]
    rows = []
    for cell, members in cells.items():
        row = {"cell": cell, "overrides": members[0].overrides, "seeds": sum(r.error is None for r in members),
               "failed": sum(r.error is not None for r in members)}
        for metric in metrics:
            values = [float(r.results[metric]) for r in members if r.error is None and metric in r.results
                      and r.results[metric] is not None]
            row[metric] = _mean_std(values) if values else None
        rows.append(row)
    return metrics, rows


def _budget(runs: list[Run]) -> str:
    cfg = runs[0].config
    if cfg is None:
        return "unknown"
    t, d = cfg.train, cfg.data
    steps = f"{t.max_steps} steps (train.max_steps)" if t.max_steps else f"{t.epochs} epochs"
    data = d.name + (f", {d.subset}-image subset" if d.subset else "")
    return (f"{steps}, batch {t.batch_size}, {cfg.model.backbone}, data {data}, "
            f"{len({r.seed for r in runs})} seed(s) per cell")


def _overrides_text(overrides: dict) -> str:
    return ", ".join(f"`{k}={json.dumps(v)}`" for k, v in overrides.items()) or "(the base recipe)"


def _cell_value(row: dict, metric: str) -> str:
    value = row[metric]
    if value is None:
        return "–"
    digits = 1 if metric.endswith("_s") else 3
    if row["seeds"] > 1:
        return f"{value[0]:.{digits}f} ± {value[1]:.{digits}f}"
    return f"{value[0]:.{digits}f}"


def write_report(runs: list[Run], out_dir: Path, title: str, metrics: list[str] | None = None,
                 base: str = "") -> tuple[str, list[Path]]:
    """Write results.md, results.csv and the plots into `out_dir`; -> (Markdown text, files written)."""
    metrics, rows = summarize(runs, metrics)
    header = ["cell", "seeds"] + metrics
    lines = [f"## {title}", ""] + ([f"Base recipe: `{base}`"] if base else [])
    lines += [f"Budget: {_budget(runs)}", "", "Cells (overrides of the base recipe):"]
    lines += [f"- {row['cell']}: {_overrides_text(row['overrides'])}" for row in rows]
    if any(row["seeds"] == 1 for row in rows):
        lines += ["", "Cells with one seed show a single value (no spread: run more seeds for error bars)."]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["cell"], str(row["seeds"]) + (f" ({row['failed']} failed)" if row["failed"] else "")]
        lines.append("| " + " | ".join(cells + [_cell_value(row, m) for m in metrics]) + " |")
    failed = [r for r in runs if r.error]
    if failed:
        lines += ["", "Failed runs:"] + [f"- {r.cell} seed {r.seed}: {r.error}" for r in failed]
    table = "\n".join(lines) + "\n"
    written = [atomic_write_text(out_dir / "results.md", table)]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["cell", "seed"] + metrics + ["error"])
    for r in runs:
        writer.writerow([r.cell, r.seed] + [r.results.get(m, "") for m in metrics] + [r.error or ""])
    written.append(atomic_write_text(out_dir / "results.csv", buf.getvalue()))
    from ssl_aug.evaluation.floors import reference_lines
    from ssl_aug.evaluation.plots import plot_results

    refs = reference_lines(runs, out_dir) if any(m.endswith("top1") for m in metrics) else {}
    plots, note = plot_results(rows, metrics, out_dir, title, references=refs)
    return table + (f"\n{note}\n" if note else ""), written + plots
