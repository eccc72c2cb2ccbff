"""Ablation plots: accuracy.png (top-1 per cell; error bars only with several seeds) and
invariance.png (invariance per transform family per cell). Needs matplotlib (the `plot` extra)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["plot_results"]


def plot_results(rows: list[dict], metrics: list[str], out_dir: Path, title: str) -> tuple[list[Path], str]:
    """-> (PNG files written, a note when plots were skipped)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], "(plots skipped: matplotlib is not installed; pip install 'ssl_aug[plot]')"
    from ssl_aug.io import atomic_write

    written = []
    names = [r["cell"] for r in rows]
    acc = [m for m in metrics if m.endswith("top1")]
    if acc:
        fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(names)), 3.8))
        width = 0.8 / len(acc)
        for j, m in enumerate(acc):
            means = [r[m][0] if r[m] else 0 for r in rows]
            errs = [r[m][1] if r[m] and r["seeds"] > 1 else 0 for r in rows]
            ax.bar([i + j * width for i in range(len(rows))], means, width, label=m,
                   yerr=errs if any(r["seeds"] > 1 for r in rows) else None, capsize=3)
        ax.set_xticks([i + width * (len(acc) - 1) / 2 for i in range(len(rows))], names, rotation=20, ha="right")
        ax.set_ylabel("top-1 accuracy")
        ax.set_ylim(0, 1)
        ax.set_title(title)
        ax.legend()
        fig.tight_layout()
        written.append(atomic_write(out_dir / "accuracy.png", lambda f: fig.savefig(f, format="png", dpi=120)))
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
        written.append(atomic_write(out_dir / "invariance.png", lambda f: fig.savefig(f, format="png", dpi=120)))
        plt.close(fig)
    return written, ""
