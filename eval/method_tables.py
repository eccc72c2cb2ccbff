"""Colour distortion x method and methods at equal CPU minutes, from finished ablation runs.

    SSL_AUG_DATA=... python eval/method_tables.py [RUN_ROOTS ...] --recorded eval/records/color_by_method.csv \
        --save-records eval/records/color_by_method.csv

Each root is an ablation output folder (<cell>/seed*/ with eval.json, config.json, metrics.jsonl); the same
cell under several roots (or several seed folders) counts as seeds, told apart by each run's recipe seed.
--recorded adds runs whose folders were not kept, from a records CSV (cell, seed, knn_top1, train_time_s, and
optionally curve "epoch:seconds:kNN;..." and note) or an ablation's results.csv; a run folder of the same cell
and seed takes precedence. --save-records writes every run read to such a CSV, so the tables can be rebuilt
once the run folders are gone.
Cells named NAME and NAME_no_color form one row of the colour table: kNN top-1 (mean ± std over seeds) with
and without colour distortion and the points it costs. The equal-minutes table reads runs trained with the
kNN monitor (eval.knn_every > 0): each method's monitor kNN at the same summed training time (epoch_time_s,
monitor time excluded), linearly interpolated between monitor epochs of its own 15-epoch schedule. Floors
(chance, raw pixels, random encoder) are computed for the runs' recipe. Prints both tables and rewrites the
"methods" section of BENCHMARKS.md (--no-write to skip).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ssl_aug.benchmarks import markdown_table, update_benchmarks_md  # noqa: E402

NO_COLOR = "_no_color"


def read_run(run_dir: Path) -> dict | None:
    """One finished run -> {"cell", "seed", "knn", "train_s", "curve": [(epoch, summed epoch s, monitor kNN)],
    "note"}; None while it has no eval.json."""
    if not (run_dir / "eval.json").is_file():
        return None
    results = json.loads((run_dir / "eval.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    cell = json.loads((run_dir / "ablation_cell.json").read_text())["cell"]
    elapsed, epoch_end, curve = 0.0, {}, []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("type") == "epoch" and "epoch_time_s" in rec:
            elapsed += rec["epoch_time_s"]
            epoch_end[rec["epoch"]] = elapsed
        if "knn_top1" in rec and rec.get("epoch") in epoch_end:
            curve.append((rec["epoch"], epoch_end[rec["epoch"]], rec["knn_top1"]))
    return {"cell": cell, "seed": config["seed"], "knn": results["knn_top1"], "train_s": results["train_time_s"],
            "curve": curve, "note": f"run folder {run_dir.parent.parent.name}/{run_dir.parent.name}/{run_dir.name}"}


def read_records(path: Path) -> list[dict]:
    """Runs from a records CSV (see --save-records) or an ablation's results.csv; failed rows are left out."""
    runs = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row.get("error"):
                continue
            curve = [(float(e), float(t), float(k)) for e, t, k in
                     (point.split(":") for point in (row.get("curve") or "").split(";") if point)]
            runs.append({"cell": row["cell"], "seed": int(row["seed"]), "knn": float(row["knn_top1"]),
                         "train_s": float(row["train_time_s"]) if row.get("train_time_s") else None,
                         "curve": curve, "note": row.get("note") or f"recorded in {path.name}"})
    return runs


def collect(roots: list[Path], recorded: list[Path] = ()) -> list[dict]:
    runs = [r for root in roots for d in sorted(root.glob("*/seed*")) if d.is_dir() and (r := read_run(d))]
    have = {(r["cell"], r["seed"]) for r in runs}
    for path in recorded:
        for r in read_records(path):
            if (r["cell"], r["seed"]) not in have:
                runs.append(r)
                have.add((r["cell"], r["seed"]))
    return runs


def save_records(runs: list[dict], path: Path) -> None:
    """Every run as one CSV row (cell, seed, knn_top1, train_time_s, curve, note), written atomically."""
    from ssl_aug.io import atomic_write_text

    rows = [["cell", "seed", "knn_top1", "train_time_s", "curve", "note"]]
    for r in sorted(runs, key=lambda r: (r["seed"], method_order(r["cell"].removesuffix(NO_COLOR)), r["cell"])):
        curve = ";".join(f"{e:g}:{t:.1f}:{k:.4f}" for e, t, k in r["curve"])
        rows.append([r["cell"], r["seed"], f"{r['knn']:.4f}", "" if r["train_s"] is None else f"{r['train_s']:.0f}",
                     curve, r["note"]])
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    atomic_write_text(path, buf.getvalue())


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def method_order(cell: str) -> tuple[int, str]:
    """Registration order of ssl_aug's methods (the order `ssl-aug list methods` prints), other cells last."""
    from ssl_aug.methods import list_methods

    names = list(list_methods())
    return (names.index(cell), cell) if cell in names else (len(names), cell)


def colour_table(runs: list[dict]) -> str:
    by_cell: dict[str, list[dict]] = {}
    for r in runs:
        by_cell.setdefault(r["cell"], []).append(r)
    rows = []
    for method in sorted((c for c in by_cell if not c.endswith(NO_COLOR)), key=method_order):
        full, off = by_cell[method], by_cell.get(method + NO_COLOR, [])
        if not off:
            continue
        seeds_full, seeds_off = {r["seed"]: r for r in full}, {r["seed"]: r for r in off}
        paired = [100 * (seeds_full[s]["knn"] - seeds_off[s]["knn"]) for s in sorted(seeds_full) if s in seeds_off]
        cost = (f"{statistics.mean(paired):.1f}" + (f" ± {statistics.stdev(paired):.1f}" if len(paired) > 1 else "")
                if paired else "-")
        train = " / ".join(f"{statistics.median(t):,.0f}" if (t := [r["train_s"] for r in rs if r["train_s"]]) else "-"
                           for rs in (full, off))
        rows.append([method, f"{len(seeds_full)} / {len(seeds_off)}", mean_std([r["knn"] for r in full]),
                     mean_std([r["knn"] for r in off]), cost, train])
    return markdown_table(["method", "seeds (full / no colour)", "kNN top-1, full views", "no colour distortion",
                           "points lost (paired by seed)", "median train s (full / no colour)"], rows)


def at_time(curve: list[tuple], seconds: float) -> tuple[float, float] | None:
    """(epochs, monitor kNN) reached after `seconds` of training, interpolated between monitor points."""
    points = [(0.0, 0.0, None)] + curve
    for (e0, t0, k0), (e1, t1, k1) in zip(points, points[1:]):
        if t0 <= seconds <= t1:
            if k0 is None:
                return None if seconds < t1 else (e1, k1)
            w = (seconds - t0) / (t1 - t0)
            return e0 + w * (e1 - e0), k0 + w * (k1 - k0)
    return None


def with_curves(runs: list[dict]) -> list[dict]:
    """The full-view runs trained with the kNN monitor (two or more monitor points)."""
    return [r for r in runs if len(r["curve"]) >= 2 and not r["cell"].endswith(NO_COLOR)]


def minutes_table(runs: list[dict], budgets: list[float]) -> str:
    rows = []
    for r in sorted(with_curves(runs), key=lambda r: -r["curve"][-1][2]):
        row = [r["cell"], r["seed"], f"{r['curve'][-1][1] / 60:.1f}"]
        for minutes in budgets:
            hit = at_time(r["curve"], minutes * 60)
            row += ["-", "-"] if hit is None else [f"{hit[0]:.1f}", f"{hit[1]:.3f}"]
        row += [f"{r['curve'][-1][2]:.3f}", f"{r['knn']:.3f}"]
        rows.append(row)
    header = ["method", "seed", "train min, 15 epochs"]
    for minutes in budgets:
        header += [f"epochs in {minutes:g} min", f"monitor kNN at {minutes:g} min"]
    return markdown_table(header + ["monitor kNN, 15 epochs", "kNN top-1, full test, 15 epochs"], rows)


def floors_line(runs: list[dict], recipe: str) -> str:
    """Chance, raw pixels and the random encoder of `recipe` (the cells' shared data and backbone), the
    random encoder averaged over the runs' seeds."""
    from ssl_aug.config import load_recipe
    from ssl_aug.evaluation.floors import floors_for_config

    found = [floors_for_config(load_recipe(recipe, {"seed": seed})) for seed in sorted({r["seed"] for r in runs})]
    parts = [f"{name} {statistics.mean(f[name] for f in found):.3f}" for name in ("chance", "raw pixels", "random encoder")]
    return f"Floors (kNN, full test split, mean over the {len(found)} seed(s)' random encoders): " + ", ".join(parts) + "."


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("roots", nargs="*", type=Path, help="ablation output folders")
    ap.add_argument("--recorded", type=Path, nargs="+", default=[],
                    help="records CSVs (or results.csv) of runs whose folders were not kept")
    ap.add_argument("--save-records", type=Path, default=None, help="write every run read to this records CSV")
    ap.add_argument("--recipe", default="simclr_cifar10_cpu", help="recipe whose floors are shown (the spec's base)")
    ap.add_argument("--minutes", type=float, nargs="+", default=None,
                    help="equal-time budgets in minutes (default: half and all of the fastest method's run)")
    ap.add_argument("--no-floors", action="store_true", help="skip computing the floors (needs the data)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md as it is")
    args = ap.parse_args(argv)
    runs = collect(args.roots, args.recorded)
    if not runs:
        print(f"no finished runs (eval.json) under {', '.join(map(str, args.roots)) or 'no root'} and no records",
              file=sys.stderr)
        return 1
    if args.save_records is not None:
        save_records(runs, args.save_records)
    curved = with_curves(runs)
    fastest = min((r["curve"][-1][1] for r in curved), default=0.0) / 60
    budgets = args.minutes or [round(fastest / 2, 1), float(int(fastest))]
    body = "### Colour distortion x method\n\n" + colour_table(runs)
    if curved:
        body += "\n\n### Methods at equal CPU minutes (same views)\n\n" + minutes_table(runs, budgets)
    if not args.no_floors:
        body += "\n\n" + floors_line(runs, args.recipe)
    print(body)
    if not args.no_write:
        update_benchmarks_md("methods", "Methods under the same views, CIFAR-10 at the CPU budget", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
