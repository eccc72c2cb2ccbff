"""Search reports: the trial table (trials.md + trials.csv), the best policy as a recipe TOML
(best_recipe.toml), Spearman rank correlations of the label-free scores with the supervised objective,
and plots (plots.py). `compare.py` adds the test-split comparison."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from ssl_aug.io import atomic_write_text
from ssl_aug.workflows.search.objectives import LABEL_FREE
from ssl_aug.workflows.search.space import apply_point

__all__ = ["trial_rows", "first_rung_rows", "spearman", "correlations", "dump_toml", "write_best_recipe", "write_trials", "best_trial"]

SCORE_COLUMNS = ("knn_val", "alignment", "uniformity", "align_uniform", "rotation")


def _ranks(values: list[float]) -> list[float]:
    """1-based ranks, ties get their average rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rank correlation (Pearson correlation of average ranks); nan when either side is constant
    or there are fewer than 3 pairs."""
    if len(x) != len(y) or len(x) < 3:
        return float("nan")
    rx, ry = _ranks(list(x)), _ranks(list(y))
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sx = math.sqrt(sum((a - mx) ** 2 for a in rx))
    sy = math.sqrt(sum((b - my) ** 2 for b in ry))
    return sxy / (sx * sy) if sx > 0 and sy > 0 else float("nan")


def trial_rows(study) -> list[dict]:
    """One dict per trial: number, state, value, params, final scores, epochs reached, time, run_dir."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        attrs = t.user_attrs
        if attrs.get("interrupted"):
            continue  # a killed attempt; its parameters were enqueued again and resumed
        row = {"trial": t.number, "state": t.state.name.lower(), "value": t.value,
               "epochs": max(t.intermediate_values) if t.intermediate_values else 0,
               "baseline": bool(attrs.get("baseline")), "run_dir": attrs.get("run_dir", ""),
               "train_time_s": attrs.get("train_time_s"), "error": attrs.get("error", ""), "params": dict(t.params)}
        for key in SCORE_COLUMNS:
            row[key] = attrs.get(key)
        rows.append(row)
    return rows


def rho_text(rho: float, n: int, what: str = "complete trials") -> str:
    """A Spearman rho for a report: 3 decimals, or why there is none (nan)."""
    if not math.isnan(rho):
        return f"{rho:.3f}"
    return f"n/a (needs >= 3 {what})" if n < 3 else "n/a (a constant score or knn_val: no ranking)"


def correlations(rows: list[dict]) -> dict[str, tuple[float, int]]:
    """{label-free score: (Spearman rho with knn_val, trials used)} over complete trials with both."""
    out = {}
    done = [r for r in rows if r["state"] == "complete" and r.get("knn_val") is not None]
    for name in LABEL_FREE:
        key = {"neg_alignment": "alignment", "neg_uniformity": "uniformity"}.get(name, name)
        sign = -1.0 if name.startswith("neg_") else 1.0
        pairs = [(sign * r[key], r["knn_val"]) for r in done if r.get(key) is not None]
        out[name] = (spearman([a for a, _ in pairs], [b for _, b in pairs]), len(pairs))
    return out


def first_rung_rows(rows: list[dict], search_dir: Path, epoch: int = 1) -> list[dict]:
    """Every trial's scores after `epoch` (from its objective.jsonl): the pruner's first rung, where all
    trials, pruned or not, were scored at the same budget."""
    out = []
    for r in rows:
        path = search_dir / r["run_dir"] / "objective.jsonl" if r["run_dir"] else None
        if path is None or not path.is_file():
            continue
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if rec.get("epoch") == epoch:
                out.append({**{k: rec.get(k) for k in SCORE_COLUMNS}, "state": "complete"})
                break
    return out


def best_trial(study):
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE and t.value is not None
            and not math.isnan(t.value)]
    return max(done, key=lambda t: (t.value, -t.number)) if done else None


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(a) for a in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(a)}" for k, a in v.items() if a is not None) + " }"
    raise ValueError(f"cannot write {v!r} as TOML")


def _toml_key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else json.dumps(k)


def dump_toml(data: dict, header: str = "") -> str:
    """Plain nested dict -> TOML text (top-level tables as [sections], deeper tables inline, None left out)."""
    lines = [f"# {line}" for line in header.splitlines()]
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict) and v is not None]
    for name, table in tables.items():
        lines += ["", f"[{_toml_key(name)}]"]
        lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in table.items() if v is not None]
    return "\n".join(lines) + "\n"


def best_recipe(spec, trial) -> dict:
    recipe = apply_point(spec.base, spec.params, trial.params)
    recipe["output_dir"] = f"runs/{spec.out_dir.name}_best"
    recipe["description"] = f"best policy of search {spec.out_dir.name} (trial {trial.number})"
    return recipe


def write_best_recipe(spec, trial, out_dir: Path) -> Path:
    header = (f"Best policy of the search in {spec.out_dir} (trial {trial.number}, {spec.raw['objective']} = "
              f"{trial.value:.4f} on the validation split).\nTrain it: ssl-aug train {out_dir / 'best_recipe.toml'}")
    return atomic_write_text(out_dir / "best_recipe.toml", dump_toml(best_recipe(spec, trial), header))


def _fmt(v, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def write_trials(rows: list[dict], params: list, out_dir: Path, objective: str) -> tuple[str, list[Path]]:
    """trials.md (sorted by value, best first) and trials.csv (trial order); -> (Markdown, files)."""
    keys = [p.key for p in params]
    cols = ["trial", "state", "value", "epochs"] + list(SCORE_COLUMNS) + keys + ["train_time_s"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols + ["baseline", "run_dir", "error"])
    for r in rows:
        w.writerow([r[c] if c in r else r["params"].get(c, "") for c in cols] + [r["baseline"], r["run_dir"], r["error"]])
    ranked = sorted(rows, key=lambda r: (r["value"] is None or math.isnan(r["value"] or 0.0), -(r["value"] or 0.0)))
    short = [k.replace("augment.", "").replace("color_jitter", "cj") for k in keys]
    head = ["trial", "state", objective, "epochs"] + [c for c in SCORE_COLUMNS if c != objective] + short
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in ranked:
        name = f"{r['trial']}" + (" (base)" if r["baseline"] else "")
        cells = [name, r["state"], _fmt(r["value"]), str(r["epochs"])]
        cells += [_fmt(r[c]) for c in SCORE_COLUMNS if c != objective]
        cells += [_fmt(r["params"].get(k), 3) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    files = [atomic_write_text(out_dir / "trials.csv", buf.getvalue()), atomic_write_text(out_dir / "trials.md", table)]
    return table, files
