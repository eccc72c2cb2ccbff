"""Search plots (matplotlib, the `plot` extra): history.png (objective per trial, pruned trials at their
last reported value, best so far), importances.png (Optuna's fANOVA parameter importances) and
scores.png (each label-free score against knn_val over the complete trials)."""

from __future__ import annotations

import math
from pathlib import Path

from ssl_aug.evaluation.plots import MISSING, _pyplot, _save

__all__ = ["plot_search"]


def _history(rows: list[dict], objective: str, path: Path, plt) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    done = [r for r in rows if r["state"] == "complete" and r["value"] is not None and not math.isnan(r["value"])]
    pruned = [r for r in rows if r["state"] == "pruned" and r["value"] is not None]
    ax.scatter([r["trial"] for r in done], [r["value"] for r in done], s=18, label="complete")
    if pruned:
        ax.scatter([r["trial"] for r in pruned], [r["value"] for r in pruned], s=18, marker="x", c="0.5",
                   label="pruned (last reported epoch)")
    best, xs, ys = -math.inf, [], []
    for r in sorted(done, key=lambda r: r["trial"]):
        best = max(best, r["value"])
        xs.append(r["trial"])
        ys.append(best)
    if xs:
        ax.step(xs, ys, where="post", c="tab:red", label="best so far")
    base = [r for r in done if r["baseline"]]
    if base:
        ax.axhline(base[0]["value"], ls="--", c="0.3", lw=1, label="base recipe (trial 0)")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"{objective} (validation split)")
    ax.set_title("Optimisation history")
    ax.legend(fontsize=8)
    return _save(fig, path)


def _importances(study, path: Path, plt) -> Path | None:
    import optuna

    try:
        imp = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError, ZeroDivisionError):
        return None  # fewer than two complete trials, or no parameter varied
    if not imp:
        return None
    names = list(imp)[::-1]
    fig, ax = plt.subplots(figsize=(6.4, 0.4 * len(names) + 1.2))
    ax.barh(names, [imp[n] for n in names])
    ax.set_xlabel("importance (fANOVA, share of the objective's variance)")
    ax.set_title("Parameter importances")
    return _save(fig, path)


def _scores(rows: list[dict], path: Path, plt) -> Path | None:
    from ssl_aug.workflows.search.report import spearman

    done = [r for r in rows if r["state"] == "complete" and r.get("knn_val") is not None]
    keys = [k for k in ("alignment", "uniformity", "align_uniform", "rotation") if any(r.get(k) is not None for r in done)]
    if len(done) < 3 or not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.0), squeeze=False)
    for ax, key in zip(axes[0], keys):
        pts = [(r[key], r["knn_val"]) for r in done if r.get(key) is not None]
        ax.scatter([a for a, _ in pts], [b for _, b in pts], s=14)
        rho = spearman([a for a, _ in pts], [b for _, b in pts])
        ax.set_xlabel(key + (" (lower = better)" if key in ("alignment", "uniformity") else " (higher = better)"))
        ax.set_title(f"Spearman ρ = {rho:.2f}" if rho == rho else "Spearman ρ: n/a (a constant score)", fontsize=9)
    axes[0][0].set_ylabel("knn_val")
    return _save(fig, path)


def plot_search(rows: list[dict], study, spec, out_dir: Path) -> tuple[list[Path], str]:
    """-> (PNG files written, a note when plots were skipped)."""
    plt = _pyplot()
    if plt is None:
        return [], MISSING
    out = [_history(rows, spec.raw["objective"], out_dir / "history.png", plt),
           _importances(study, out_dir / "importances.png", plt), _scores(rows, out_dir / "scores.png", plt)]
    return [p for p in out if p is not None], ""
