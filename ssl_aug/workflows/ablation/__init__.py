"""Ablations: a base recipe plus axes (or named cells) of overrides -> one run per cell and seed ->
a results table (Markdown + CSV, mean ± std over seeds) and plots.

- `spec`: load and plan (`load_spec`, `plan_runs`, the spec format in its docstring).
- `runner`: run the cells; finished cells are reused only when their resolved config hash matches.
- `report`: results.md / results.csv and the PNGs (drawn by ssl_aug.evaluation.plots).
"""

from __future__ import annotations

import json
from pathlib import Path

from ssl_aug.errors import SslAugError
from ssl_aug.workflows.ablation.report import summarize, write_report
from ssl_aug.workflows.ablation.runner import CELL_FILE, execute, stale_reason
from ssl_aug.workflows.ablation.spec import MODES, SPEC_KEYS, Run, config_hash, load_spec, plan_cells, plan_runs

__all__ = ["run_ablation", "load_spec", "plan_cells", "plan_runs", "execute", "summarize", "write_report",
           "config_hash", "stale_reason", "Run", "SPEC_KEYS", "MODES", "CELL_FILE"]


def run_ablation(spec: str | Path, overrides: list[str] = (), progress: bool = True, dry_run: bool = False,
                 rerun_changed: bool = False, cells: list[str] | None = None, **launch) -> list[Run]:
    """Plan, run (reusing finished cells whose config is unchanged) and report an ablation. `cells`: run only
    these cells (the report still covers every finished, unchanged run of the spec)."""
    data, path = load_spec(spec, overrides)
    runs = plan_runs(data, path)
    chosen = select_cells(runs, cells)
    out_dir = Path(data.get("output_dir") or f"runs/{path.stem}")
    if out_dir.exists() and not out_dir.is_dir():
        raise SslAugError(f"ablation output_dir {out_dir} is a file, not a folder; give a folder path")
    title = data.get("description") or path.stem
    if dry_run:
        for run in chosen:
            print(f"{run.cell} seed {run.seed}: {run.run_dir}  overrides {run.overrides}")
        return chosen
    from ssl_aug.train.signals import PhaseInterrupted, TrainingInterrupted, interrupt_on_signal, workflow_stop_line

    with workflow_stop_line("ablation"):
        try:
            with interrupt_on_signal():  # the trainer's own guard takes over while a cell trains
                moved = execute(chosen, progress=progress, rerun_changed=rerun_changed, **launch)
                for old in moved:
                    print(f"moved the run of an older configuration to {old}")
                ran = {id(r) for r in chosen}
                reported = [r for r in runs if id(r) in ran or finished_earlier(r)]
                report, written = write_report(reported, out_dir, title, data.get("metrics"), base=str(data["base"]))
        except (TrainingInterrupted, PhaseInterrupted) as stop:
            stopped(stop, chosen)
    print("\n" + report)
    print("wrote " + ", ".join(str(p) for p in written))
    return chosen


def select_cells(runs: list[Run], cells: list[str] | None) -> list[Run]:
    """The runs of the named cells (all runs when `cells` is None); an unknown name fails in one line."""
    if cells is None:
        return runs
    known = list(dict.fromkeys(r.cell for r in runs))
    unknown = [c for c in cells if c not in known]
    if unknown or not cells:
        raise SslAugError(f"ablation has no cell {', '.join(map(repr, unknown)) or '(none given)'}; its cells: "
                          f"{', '.join(known)}")
    return [r for r in runs if r.cell in cells]


def finished_earlier(run: Run) -> bool:
    """A run outside this call's cells that finished with the spec's current config (its results loaded)."""
    done = run.run_dir / "eval.json"
    if not done.is_file() or stale_reason(run):
        return False
    run.results, run.skipped = json.loads(done.read_text()), True
    return True


def stopped(stop, runs: list[Run]) -> None:
    """After SIGTERM / SIGINT: one line naming the stopped cell, the finished ones and how to continue;
    then exit with the signal's status (143 / 130)."""
    from ssl_aug.train.signals import end_workflow

    finished = [r for r in runs if (r.run_dir / "eval.json").is_file()]
    cell = getattr(stop, "cell", None)
    if cell is not None:
        last = cell.run_dir / "checkpoints" / "last.pt"
        kept = f"its checkpoint {last} is kept" if last.is_file() else "no checkpoint yet"
        where = f"in cell '{cell.cell}' seed {cell.seed} ({kept})"
    else:
        where = "between cells"
    end_workflow(stop.signum, f"ablation stopped {where}; {len(finished)} of {len(runs)} runs finished; continue "
                              "with the same command (finished runs are skipped, a stopped one resumes from its last "
                              "checkpoint)")
