"""Colour distortion x method and methods at equal CPU minutes, from finished ablation runs.

    SSL_AUG_DATA=... python eval/method_tables.py runs/ablate_color_by_method [MORE_RUN_ROOTS ...] \
        [--recorded eval/records/color_by_method_seed0.csv]

Each root is an ablation output folder (<cell>/seed*/ with eval.json, config.json, metrics.jsonl); the same
cell under several roots (or several seed folders) counts as seeds, told apart by each run's recipe seed.
--recorded adds runs whose folders were not kept, from an ablation's results.csv (cell, seed, knn_top1,
train_time_s); a run folder of the same cell and seed takes precedence.
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
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ssl_aug.benchmarks import markdown_table, update_benchmarks_md  # noqa: E402

NO_COLOR = "_no_color"


def read_run(run_dir: Path) -> dict | None:
    """One finished run -> {"cell", "seed", "knn", "train_s", "curve": [(summed epoch s, monitor kNN)],
    "config"}; None while it has no eval.json."""
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
            "curve": curve, "config": config}


def collect(roots: list[Path], recorded: Path | None = None) -> list[dict]:
    runs = [r for root in roots for d in sorted(root.glob("*/seed*")) if d.is_dir() and (r := read_run(d))]
    if recorded is not None:
        have = {(r["cell"], r["seed"]) for r in runs}
        with open(recorded, newline="") as f:
            for row in csv.DictReader(f):
                if row.get("error") or (row["cell"], int(row["seed"])) in have:
                    continue
                runs.append({"cell": row["cell"], "seed": int(row["seed"]), "knn": float(row["knn_top1"]),
                             "train_s": float(row["train_time_s"]) if row.get("train_time_s") else None,
                             "curve": [], "config": None})
    return runs


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


def floors_line(runs: list[dict]) -> str:
    from ssl_aug.config import config_from_dict
    from ssl_aug.evaluation.floors import floors_for_config

    by_seed = {r["seed"]: r["config"] for r in runs if r["config"] is not None}
    found = [floors_for_config(config_from_dict(c)) for c in by_seed.values()]
    parts = [f"{name} {statistics.mean(f[name] for f in found):.3f}" for name in ("chance", "raw pixels", "random encoder")]
    return f"Floors (kNN, full test split, mean over the {len(found)} seed(s)' random encoders): " + ", ".join(parts) + "."


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("roots", nargs="+", type=Path, help="ablation output folders")
    ap.add_argument("--recorded", type=Path, default=None,
                    help="results.csv of runs whose folders were not kept (cell, seed, knn_top1, train_time_s)")
    ap.add_argument("--minutes", type=float, nargs="+", default=None,
                    help="equal-time budgets in minutes (default: half and all of the fastest method's run)")
    ap.add_argument("--no-floors", action="store_true", help="skip computing the floors (needs the data)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md as it is")
    args = ap.parse_args(argv)
    runs = collect(args.roots, args.recorded)
    if not runs:
        print(f"no finished runs (eval.json) under {', '.join(map(str, args.roots))}", file=sys.stderr)
        return 1
    curved = with_curves(runs)
    fastest = min((r["curve"][-1][1] for r in curved), default=0.0) / 60
    budgets = args.minutes or [round(fastest / 2, 1), float(int(fastest))]
    body = "### Colour distortion x method\n\n" + colour_table(runs)
    if curved:
        body += "\n\n### Methods at equal CPU minutes (same views)\n\n" + minutes_table(runs, budgets)
    if not args.no_floors:
        body += "\n\n" + floors_line(runs)
    print(body)
    if not args.no_write:
        update_benchmarks_md("methods", "Methods under the same views, CIFAR-10 at the CPU budget", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
