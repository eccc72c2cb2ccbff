"""Draw docs/quickstart.png (the README's picture) from a finished quickstart: one small heat map of kNN
top-1 and the invariance per transform family, one row per cell, means over seeds.

    ssl-aug quickstart                       # writes runs/quickstart/results.csv
    python eval/quickstart_figure.py runs/quickstart [--out docs/quickstart.png]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

COLUMNS = ["knn_top1", "invariance_color_jitter", "invariance_grayscale", "invariance_hue",
           "invariance_brightness", "invariance_crop_scale", "invariance_flip"]
LABELS = ["kNN top-1", "colour jitter", "grayscale", "hue", "brightness", "crop scale", "flip"]
CELLS = {"full": "full SimCLR views", "no_color_distortion": "no colour distortion"}


def read_means(results_csv: Path) -> tuple[list[str], list[list[float]]]:
    """(cell names, per cell the mean over seeds of each column) from an ablation's results.csv."""
    sums: dict[str, list[list[float]]] = {}
    with results_csv.open() as f:
        for row in csv.DictReader(f):
            if row.get("error"):
                continue
            sums.setdefault(row["cell"], []).append([float(row[c]) for c in COLUMNS])
    cells = list(sums)
    return cells, [[sum(v) / len(v) for v in zip(*sums[c])] for c in cells]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="the quickstart output folder (holds results.csv)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "docs" / "quickstart.png")
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells, values = read_means(args.run_dir / "results.csv")
    fig, ax = plt.subplots(figsize=(6.4, 1.7), dpi=100)
    ax.imshow(values, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(LABELS)), LABELS, rotation=25, ha="right", fontsize=8)
    ax.set_yticks(range(len(cells)), [CELLS.get(c, c) for c in cells], fontsize=8)
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8, color="w" if v < 0.6 else "k")
    ax.axvline(0.5, color="w", linewidth=2)
    ax.set_title("quickstart: kNN accuracy and invariance (1 = invariant)", fontsize=9)
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
