"""Run planned ablation cells: skip finished ones, resume interrupted ones, record failures, and
refuse (or, asked to, rerun) a cell whose folder was made by a different resolved config.

Each run folder holds ``ablation_cell.json`` {"cell", "seed", "overrides", "config_sha256", "config"}
written before training, so a finished cell is reused only when its config hash matches.
"""

from __future__ import annotations

import json
import traceback
from pathlib import Path

from ssl_aug.workflows.ablation.spec import Run
from ssl_aug.errors import SslAugError
from ssl_aug.io import atomic_write_json, atomic_write_text
from ssl_aug.train.signals import PhaseInterrupted, TrainingInterrupted

__all__ = ["execute", "stale_reason", "CELL_FILE"]

CELL_FILE = "ablation_cell.json"


def _flatten(data, prefix: str = "") -> dict:
    if not isinstance(data, dict):
        return {prefix: data}
    out = {}
    for key, value in data.items():
        out.update(_flatten(value, f"{prefix}{key}." if isinstance(value, dict) else f"{prefix}{key}"))
    return out


def stale_reason(run: Run) -> str | None:
    """Why `run.run_dir` holds a run of another config (None when it is new or matches)."""
    folder = run.run_dir
    record_file = folder / CELL_FILE
    if not record_file.is_file():
        started = (folder / "eval.json").is_file() or (folder / "checkpoints").is_dir()
        return "it has no recorded configuration (made by an older ssl_aug or by hand)" if started else None
    try:
        record = json.loads(record_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return f"its {CELL_FILE} is not valid JSON"
    if record.get("config_sha256") == run.config_hash:
        return None
    old, new = _flatten(record.get("config") or {}), _flatten(run.config.to_dict())
    old.pop("output_dir", None)
    new.pop("output_dir", None)
    changed = sorted(k for k in set(old) | set(new) if old.get(k, "<unset>") != new.get(k, "<unset>"))
    shown = ", ".join(f"{k}: {old.get(k, '<unset>')!r} -> {new.get(k, '<unset>')!r}" for k in changed[:3])
    more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
    return f"its config changed ({shown or 'the recorded hash differs'}{more})"


def _move_aside(folder: Path) -> Path:
    stem, n = folder.name + ".old", 0
    target = folder.with_name(stem)
    while target.exists():
        n += 1
        target = folder.with_name(f"{stem}{n}")
    folder.rename(target)
    return target


def run_cell(config: dict, run_dir: str, progress: bool = False) -> tuple[dict, str | None]:
    """Train and evaluate one cell (a resolved config as a plain dict) -> (results, one-line error or None).
    Module-level so launchers can run it in worker processes or as a Ray task."""
    from ssl_aug.config import config_from_dict
    from ssl_aug.workflows.experiment import run_experiment
    from ssl_aug.runlock import RunFolderBusy

    run_dir = Path(run_dir)
    try:
        results = run_experiment(config_from_dict(config), run_dir, resume=True, progress=progress)
        (run_dir / "error.txt").unlink(missing_ok=True)
        return results, None
    except RunFolderBusy as exc:  # another process trains this cell: leave its folder alone
        print(f"    skipped: {exc}")
        return {}, str(exc)
    except (SslAugError, RuntimeError, ValueError) as exc:
        error = f"{type(exc).__name__}: {exc}".splitlines()[0]
        atomic_write_text(run_dir / "error.txt", error + "\n\n" + traceback.format_exc())
        print(f"    failed: {error} (recorded in {run_dir / 'error.txt'}; continuing)")
        return {}, error


def execute(runs: list[Run], progress: bool = True, rerun_changed: bool = False, launcher: str = "local",
            workers: int = 1, address: str | None = None, gpus_per_task: float = 0.0) -> list[Path]:
    """Run every cell (in order, or through ssl_aug.workflows.launchers: `workers` local processes or Ray tasks);
    returns the run folders moved aside (stale, rerun on request)."""
    stale = [(run, reason) for run in runs if (reason := stale_reason(run))]
    if stale and not rerun_changed:
        run, reason = stale[0]
        others = f" (and {len(stale) - 1} more cells)" if len(stale) > 1 else ""
        raise SslAugError(f"ablation cell '{run.cell}' seed {run.seed} in {run.run_dir} was run with another "
                          f"configuration: {reason}{others}; rerun with --rerun-changed (old runs move to "
                          f"*.old) or delete the folder")
    moved = [_move_aside(run.run_dir) for run, _ in stale]
    inline = launcher == "local" and workers == 1
    pending = []
    for i, run in enumerate(runs, 1):
        done = run.run_dir / "eval.json"
        if done.is_file():
            run.results, run.skipped = json.loads(done.read_text()), True
            print(f"[{i}/{len(runs)}] {run.cell} seed {run.seed}: done earlier, skipped")
            continue
        print(f"[{i}/{len(runs)}] {run.cell} seed {run.seed} -> {run.run_dir}")
        if run.run_dir.exists() and not run.run_dir.is_dir():
            raise SslAugError(f"ablation run folder {run.run_dir} is a file; move it away or change output_dir")
        atomic_write_json(run.run_dir / CELL_FILE, {"cell": run.cell, "seed": run.seed, "overrides": run.overrides,
                                                    "config_sha256": run.config_hash,
                                                    "config": run.config.to_dict()})
        if inline:
            try:
                run.results, run.error = run_cell(run.config.to_dict(), str(run.run_dir), progress)
            except (TrainingInterrupted, PhaseInterrupted) as stop:  # a signal: the stop line names the cell
                stop.cell = run
                raise
        else:
            pending.append(run)
    if pending:
        from ssl_aug.workflows.launchers import launch

        tasks = [(run.config.to_dict(), str(run.run_dir.resolve()), False) for run in pending]
        for run, (results, error) in zip(pending, launch(run_cell, tasks, launcher=launcher, workers=workers,
                                                          address=address, gpus_per_task=gpus_per_task)):
            run.results, run.error = results, error
    return moved
