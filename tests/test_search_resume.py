"""A search killed mid-trial (SIGKILL of its process) resumes with no finished trial lost or rerun; the
interrupted trial continues in its own run directory, which `ssl-aug eval` accepts."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("optuna")

TINY = """
base = "quickstart"
output_dir = "{out}"
trials = {trials}
validation = 40
seed = 0
[base_overrides]
"data.subset" = 240
"train.epochs" = {epochs}
"train.batch_size" = 64
"eval.monitor_train" = 200
"eval.knn_k" = 20
"model.backbone_args" = {{ widths = [8, 16, 16] }}
"method.proj_hidden_dim" = 32
"method.proj_dim" = 16
[pruner]
name = "none"
[sampler]
n_startup_trials = 2
[space]
"augment.scale.0" = {{ low = 0.1, high = 0.6 }}
"augment.grayscale_p" = {{ low = 0.0, high = 0.5 }}
"""


def tiny_spec(tmp_path: Path, trials: int = 3, epochs: int = 3, name: str = "search") -> tuple[Path, Path]:
    out = tmp_path / name
    spec = tmp_path / f"{name}.toml"
    spec.write_text(TINY.format(out=out, trials=trials, epochs=epochs))
    return spec, out


def _run_code(spec: Path) -> list[str]:
    code = f"from ssl_aug.workflows.search import run_search; run_search({str(spec)!r}, progress=False)"
    return [sys.executable, "-c", code]


def test_killed_search_resumes_without_losing_or_rerunning_trials(tmp_path):
    from ssl_aug.workflows.search import load_search
    from ssl_aug.workflows.search.report import trial_rows
    from ssl_aug.workflows.search.study import finished_trials, open_study

    epochs = 8  # the kill lands while the trial has epochs left (an idle machine runs an epoch in ~0.1 s)
    spec, out = tiny_spec(tmp_path, epochs=epochs)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(_run_code(spec), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    victim, deadline = None, time.time() + 300
    try:
        while victim is None and time.time() < deadline and proc.poll() is None:
            for d in sorted((out / "trials").glob("trial_*")) if (out / "trials").is_dir() else []:
                objective = d / "objective.jsonl"
                if d.name != "trial_0000" and objective.is_file() and not (d / "eval.json").is_file() \
                        and 1 <= len(objective.read_text().splitlines()) <= epochs // 2:
                    victim = d
                    break
            time.sleep(0.01)
        assert victim is not None, "the search finished or failed before a trial could be killed: " + \
            (proc.stderr.read().decode()[-2000:] if proc.poll() is not None else "timeout")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    loaded = load_search(spec)
    study = open_study(loaded, out)
    before = {t.number: t.user_attrs["run_dir"] for t in finished_trials(study)}
    assert before, "no trial had finished before the kill"
    evals = {n: (out / rd / "eval.json").read_text() for n, rd in before.items()}
    mtimes = {n: (out / rd / "eval.json").stat().st_mtime_ns for n, rd in before.items()}

    resumed = subprocess.run(_run_code(spec), env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    study = open_study(loaded, out)
    done = finished_trials(study)
    assert len(done) == 3  # the budget, not more: the killed trial replaced, nothing rerun
    for n, rd in before.items():  # finished trials untouched
        assert (out / rd / "eval.json").read_text() == evals[n]
        assert (out / rd / "eval.json").stat().st_mtime_ns == mtimes[n]
    rows = trial_rows(study)
    assert len(rows) == 3 and all(r["state"] == "complete" for r in rows)
    again = [t for t in done if t.user_attrs.get("run_dir") == victim.relative_to(out).as_posix()]
    assert len(again) == 1 and "resumed_from" in again[0].user_attrs  # continued in its own run directory
    logged = [json.loads(line)["epoch"] for line in (victim / "objective.jsonl").read_text().splitlines()]
    assert sorted(set(logged)) == list(range(1, epochs + 1))
    report = (out / "report.md").read_text()
    assert "3 complete" in report and (out / "best_recipe.toml").is_file() and (out / "trials.csv").is_file()

    from ssl_aug.cli import main

    assert main(["eval", str(victim), "--no-progress", "--json", str(tmp_path / "e.json")]) == 0
    assert 0.0 <= json.loads((tmp_path / "e.json").read_text())["knn"]["top1"] <= 1.0
