"""Invariance <-> robustness across the cells of an ablation: does an encoder that is more invariant to a
training transform keep more of its accuracy under the real corruptions that transform resembles?

For every run (cell x seed) and every link transform -> corruptions (LINKS), x = the run's invariance
score of the transform (evaluation.invariance, 1 = invariant) and y = its kNN top-1 under the linked
corruptions (mean over them and their severities), also as a fraction of its clean top-1 ("retained") and,
when the ablation folder knows chance (floors.json), as the fraction of the clean accuracy above chance that
survives ("retained above chance" = (top-1 - chance) / (clean - chance): a cell at chance retains nothing).
Reads each run's eval.json (invariance_<family>, robustness_knn_<corruption>, robustness_knn_clean, written
when the recipe has eval.invariance and eval.robustness) or, for the robustness part, the eval_cli.json that
`ssl-aug eval RUN --robustness` writes. Writes invariance_robustness.md and .png into the ablation folder."""

from __future__ import annotations

import json
import math
from pathlib import Path

from ssl_aug.errors import SslAugError
from ssl_aug.io import atomic_write_text

LINKS = {"color_jitter": ("brightness", "contrast", "saturate"),
         "blur": ("defocus_blur", "motion_blur", "glass_blur"),
         "crop_scale": ("zoom_blur", "pixelate")}

__all__ = ["LINKS", "run_records", "link_rows", "correlation", "write_invariance_robustness"]


def _robustness(run_dir: Path, flat: dict) -> tuple[float | None, dict]:
    """(clean kNN top-1, {corruption: kNN top-1 mean over severities}) from eval.json or eval_cli.json."""
    per = {k[len("robustness_knn_"):]: v for k, v in flat.items() if k.startswith("robustness_knn_")}
    clean = per.pop("clean", None)
    for key in ("mean", "drop", "mce"):
        per.pop(key, None)
    cli = run_dir / "eval_cli.json"
    if not per and cli.is_file():
        r = json.loads(cli.read_text()).get("robustness") or {}
        per = {n: sum(e["knn"]) / len(e["knn"]) for n, e in (r.get("by_corruption") or {}).items()}
        clean = (r.get("clean") or {}).get("knn")
    return clean, per


def run_records(ablation_dir: str | Path) -> list[dict]:
    """One record per finished run of the ablation: {"cell", "seed", "run_dir", "invariance": {family: score},
    "clean": kNN top-1, "corrupted": {corruption: top-1}}."""
    out = []
    for marker in sorted(Path(ablation_dir).rglob("ablation_cell.json")):
        run_dir = marker.parent
        if not (run_dir / "eval.json").is_file():
            continue
        cell = json.loads(marker.read_text())
        flat = json.loads((run_dir / "eval.json").read_text())
        clean, per = _robustness(run_dir, flat)
        inv = {k[len("invariance_"):]: v for k, v in flat.items() if k.startswith("invariance_")}
        out.append({"cell": cell.get("cell", run_dir.parent.name), "seed": cell.get("seed", run_dir.name),
                    "run_dir": str(run_dir), "invariance": inv, "clean": clean or flat.get("knn_top1"),
                    "corrupted": per})
    return out


def link_rows(records: list[dict], chance: float | None = None) -> list[dict]:
    """Rows (cell, seed, transform, invariance, corruptions, top1, clean, retained, above_chance) where both
    sides exist (above_chance None without `chance`)."""
    rows = []
    for r in records:
        for transform, corruptions in LINKS.items():
            have = [c for c in corruptions if c in r["corrupted"]]
            if transform not in r["invariance"] or not have:
                continue
            acc = sum(r["corrupted"][c] for c in have) / len(have)
            rows.append({"cell": r["cell"], "seed": r["seed"], "transform": transform,
                         "invariance": r["invariance"][transform], "corruptions": have, "top1": acc,
                         "clean": r["clean"], "retained": acc / r["clean"] if r["clean"] else float("nan"),
                         "above_chance": None if chance is None or not r["clean"] or r["clean"] <= chance
                         else (acc - chance) / (r["clean"] - chance)})
    return rows


def correlation(xs: list[float], ys: list[float]) -> float:
    """Pearson correlation (nan for fewer than 3 points or no spread)."""
    n = len(xs)
    if n < 3:
        return float("nan")
    mx, my = sum(xs) / n, sum(ys) / n
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    sxx, syy = sum((x - mx) ** 2 for x in xs), sum((y - my) ** 2 for y in ys)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else float("nan")


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def _table(rows: list[dict]) -> str:
    lines = ["| cell | seed | transform | invariance | linked corruptions | kNN top-1 % under them | clean % | "
             "retained | retained above chance |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['cell']} | {r['seed']} | {r['transform']} | {r['invariance']:.3f} | "
                     f"{', '.join(r['corruptions'])} | {100 * r['top1']:.1f} | {100 * r['clean']:.1f} | "
                     f"{r['retained']:.3f} | {_fmt(r['above_chance'])} |")
    summary = ["", "| transform | runs | Pearson r (invariance, top-1 under them) | Pearson r (invariance, retained) "
               "| Pearson r (invariance, retained above chance) |", "|---|---|---|---|---|"]
    for t in LINKS:
        sub = [r for r in rows if r["transform"] == t]
        if sub:
            xs = [r["invariance"] for r in sub]
            above = [r for r in sub if r["above_chance"] is not None]
            r_above = correlation([r["invariance"] for r in above], [r["above_chance"] for r in above])
            summary.append(f"| {t} | {len(sub)} | {correlation(xs, [r['top1'] for r in sub]):.2f} | "
                           f"{correlation(xs, [r['retained'] for r in sub]):.2f} | {r_above:.2f} |")
    return "\n".join(lines + summary)


def _plot(rows: list[dict], path: Path, title: str) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    from ssl_aug.io import atomic_write

    fig, ax = plt.subplots(figsize=(6, 4.2))
    cells = sorted({r["cell"] for r in rows})
    markers = "osD^v<>p*h"
    colours = {t: c for t, c in zip(LINKS, ("tab:orange", "tab:blue", "tab:green"))}
    for r in rows:
        ax.scatter(r["invariance"], r["top1"], color=colours[r["transform"]],
                   marker=markers[cells.index(r["cell"]) % len(markers)], s=45, alpha=0.85)
    for t, c in colours.items():
        ax.scatter([], [], color=c, label=f"{t} <-> {', '.join(LINKS[t])}")
    for i, cell in enumerate(cells):
        ax.scatter([], [], color="0.4", marker=markers[i % len(markers)], label=f"cell: {cell}")
    ax.set_xlabel("invariance score of the training transform (1 = invariant)")
    ax.set_ylabel("kNN top-1 under the linked corruptions")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="best")
    out = atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100, bbox_inches="tight"), what="plot")
    plt.close(fig)
    return out


def write_invariance_robustness(ablation_dir: str | Path, title: str = "") -> tuple[str, list[Path]]:
    """Table (Markdown) and scatter plot of invariance vs retained accuracy for an ablation folder; written to
    invariance_robustness.md / .png there. One-line error when no run has both invariance and robustness."""
    out_dir = Path(ablation_dir)
    try:
        chance = json.loads((out_dir / "floors.json").read_text())["floors"]["chance"]
    except (OSError, ValueError, KeyError, TypeError):
        chance = None
    rows = link_rows(run_records(out_dir), chance)
    if not rows:
        raise SslAugError(f"{out_dir}: no run has both invariance scores and corruption accuracies; train with "
                          "eval.invariance = true and eval.robustness = true, or run `ssl-aug eval RUN --robustness`")
    text = _table(rows)
    written = [atomic_write_text(out_dir / "invariance_robustness.md", text + "\n")]
    png = _plot(rows, out_dir / "invariance_robustness.png", title or f"{out_dir.name}: invariance vs robustness")
    return text, written + ([png] if png else [])
