"""Every matplotlib figure of the package (needs the `plot` extra): ablation accuracy bars with reference
lines (chance, raw pixels, random encoder), the invariance heat map, and reliability diagrams. Figures are
saved with a tight bounding box (titles, tick labels and colour-bar labels are never cut off) and written
atomically. Each function returns the path written, or None when matplotlib is missing."""

from __future__ import annotations

import textwrap
from pathlib import Path

__all__ = ["plot_results", "plot_accuracy", "plot_invariance", "plot_reliability", "plot_confidence_histogram",
           "plot_training_curves", "MISSING"]

MISSING = "(plots skipped: matplotlib is not installed; pip install 'ssl_aug[plot]')"
REFERENCE_STYLES = {"chance": ("0.4", ":"), "raw pixels": ("tab:red", "--"), "random encoder": ("tab:purple", "-.")}


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _save(fig, path: Path) -> Path:
    from ssl_aug.io import atomic_write

    out = atomic_write(Path(path), lambda f: fig.savefig(f, format="png", dpi=120, bbox_inches="tight",
                                                         pad_inches=0.15), what="plot")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return out


def _wrap(title: str, width: int) -> str:
    return "\n".join(textwrap.wrap(title, max(20, width))) if title else ""


def plot_accuracy(rows: list[dict], metrics: list[str], path: Path, title: str,
                  references: dict[str, float] | None = None) -> Path | None:
    """Grouped bars: per cell (rows[i]["cell"]) the mean of each accuracy metric (rows[i][m] = (mean, std) or
    None), error bars when a cell has several seeds; horizontal reference lines {label: accuracy}."""
    plt = _pyplot()
    acc = [m for m in metrics if m.endswith("top1")]
    if plt is None or not acc or not rows:
        return None
    names = [r["cell"] for r in rows]
    width_in = max(5.5, 1.3 * len(names))
    fig, ax = plt.subplots(figsize=(width_in, 4.2))
    width = 0.8 / len(acc)
    several = any(r.get("seeds", 1) > 1 for r in rows)
    for j, m in enumerate(acc):
        means = [r[m][0] if r.get(m) else 0 for r in rows]
        errs = [r[m][1] if r.get(m) and r.get("seeds", 1) > 1 else 0 for r in rows]
        ax.bar([i + j * width for i in range(len(rows))], means, width, label=m,
               yerr=errs if several else None, capsize=3)
    for label, value in (references or {}).items():
        if value is None:
            continue
        color, style = REFERENCE_STYLES.get(label, ("0.2", "--"))
        ax.axhline(value, color=color, linestyle=style, linewidth=1.2, label=f"{label} ({value:.3f})")
    ax.set_xticks([i + width * (len(acc) - 1) / 2 for i in range(len(rows))], names, rotation=20, ha="right")
    ax.set_ylabel("top-1 accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(_wrap(title, int(width_in * 11)))
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    return _save(fig, path)


def plot_invariance(rows: list[dict], metrics: list[str], path: Path, title: str) -> Path | None:
    """Heat map: cells x transform families of the mean invariance (metrics named invariance_<family>)."""
    plt = _pyplot()
    inv = [m for m in metrics if m.startswith("invariance_")]
    if plt is None or not inv or not rows:
        return None
    import numpy as np

    grid = np.array([[r[m][0] if r.get(m) else np.nan for m in inv] for r in rows], dtype=float)
    width_in = max(6.5, 0.95 * len(inv) + 3)
    fig, ax = plt.subplots(figsize=(width_in, 1.6 + 0.55 * len(rows)))
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(inv)), [m[len("invariance_"):] for m in inv], rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), [r["cell"] for r in rows])
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=8,
                        color="w" if grid[i, j] < 0.6 else "k")
    bar = fig.colorbar(im, ax=ax, fraction=0.05, pad=0.02)
    bar.set_label("invariance\n(1 = identical embedding)", fontsize=8)
    ax.set_title(_wrap(f"{title}: invariance per transform", int(width_in * 10)))
    return _save(fig, path)


def plot_results(rows: list[dict], metrics: list[str], out_dir: Path, title: str,
                 references: dict[str, float] | None = None) -> tuple[list[Path], str]:
    """The ablation figures: accuracy.png and invariance.png in out_dir -> (files written, note)."""
    if _pyplot() is None:
        return [], MISSING
    out_dir = Path(out_dir)
    written = [plot_accuracy(rows, metrics, out_dir / "accuracy.png", title, references),
               plot_invariance(rows, metrics, out_dir / "invariance.png", title)]
    return [p for p in written if p is not None], ""


def plot_reliability(bins: dict, path: Path, title: str = "") -> Path | None:
    """Reliability diagram from calibration.reliability_bins: accuracy per confidence bin against the
    diagonal (gaps shaded), the share of samples per bin underneath."""
    plt = _pyplot()
    if plt is None:
        return None
    edges, counts = bins["edges"], bins["count"]
    n = max(1, sum(counts))
    centers = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]
    width = edges[1] - edges[0]
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(5, 5.6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    acc = [a if a is not None else 0 for a in bins["accuracy"]]
    conf = [c if c is not None else m for c, m in zip(bins["confidence"], centers)]
    ax.bar(centers, acc, width * 0.95, color="tab:blue", edgecolor="k", linewidth=0.5, label="accuracy")
    gap_lo = [min(a, c) for a, c in zip(acc, conf)]
    ax.bar(centers, [abs(c - a) if k else 0 for a, c, k in zip(acc, conf, counts)], width * 0.95, bottom=gap_lo,
           fill=False, edgecolor="tab:red", linewidth=0.8, hatch="//", label="gap to mean confidence")
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(_wrap(title or "reliability diagram", 55))
    ax2.bar(centers, [c / n for c in counts], width * 0.95, color="0.5")
    ax2.set_xlabel("confidence (max class probability)")
    ax2.set_ylabel("share of samples")
    return _save(fig, path)


def plot_confidence_histogram(confidence, kept, threshold: float, path: Path, title: str = "") -> Path | None:
    """Quality gate: histogram of the candidates' confidence (max class probability), kept and rejected
    stacked, with the threshold C as a vertical line. confidence (N,) floats in [0, 1], kept (N,) bools."""
    plt = _pyplot()
    if plt is None:
        return None
    conf = [float(c) for c in confidence]
    keep = [bool(k) for k in kept]
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    bins = [i / 20 for i in range(21)]
    ax.hist([[c for c, k in zip(conf, keep) if k], [c for c, k in zip(conf, keep) if not k]], bins=bins,
            stacked=True, color=["tab:green", "tab:red"], label=["kept", "rejected"], edgecolor="k", linewidth=0.4)
    ax.axvline(threshold, color="k", linestyle="--", linewidth=1, label=f"C = {threshold:g}")
    ax.set_xlim(0, 1)
    ax.set_xlabel("confidence (max class probability of the gate classifier)")
    ax.set_ylabel("candidates")
    ax.legend(fontsize=8)
    ax.set_title(_wrap(title or "quality gate", 60))
    return _save(fig, path)


def plot_training_curves(records: list[dict], path: Path, title: str = "") -> Path | None:
    """Loss and learning rate per logged step, and the epoch kNN monitor (when it ran), from the records
    of a run's metrics.jsonl (dicts with "type" = "step" | "epoch"). None without matplotlib or steps."""
    plt = _pyplot()
    steps = [r for r in records if r.get("type") == "step" and "loss" in r]
    if plt is None or not steps:
        return None
    knn = [r for r in records if r.get("type") == "epoch" and "knn_top1" in r]
    panels = 3 if knn else 2
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.4))
    x = [r["step"] for r in steps]
    axes[0].plot(x, [r["loss"] for r in steps], color="tab:blue")
    axes[0].set(xlabel="step", ylabel="loss", title="training loss")
    axes[1].plot(x, [r.get("lr", float("nan")) for r in steps], color="tab:orange")
    axes[1].set(xlabel="step", ylabel="learning rate", title="learning rate")
    if knn:
        axes[2].plot([r["step"] for r in knn], [r["knn_top1"] for r in knn], marker="o", color="tab:green")
        axes[2].set(xlabel="step", ylabel="kNN top-1", title="kNN monitor", ylim=(0, 1))
    for ax in axes:
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(_wrap(title, 30 * panels))
    fig.tight_layout()
    return _save(fig, path)
