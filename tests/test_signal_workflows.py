"""Signals in the workflows around training, with real signals to real `ssl-aug` processes: during an
export, inside a fine-tuning run, an ablation cell and a search trial. Each ends with one line saying what is saved
and how to continue; continuing gives the uninterrupted run's results."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from test_ablation import SPEC as ABLATION_SPEC
from test_signal_phases import _cli as train_cli, _recipe
from test_search_resume import tiny_spec

pytest.importorskip("ssl_aug.models.small_cnn")

# The real CLI with one place slowed down: $SLOW names it; once reached it touches $PHASE_MARK and sleeps,
# so the test signals the process right there.
SLOW = r"""
import os, sys, time
from pathlib import Path
slow, mark = os.environ["SLOW"], Path(os.environ["PHASE_MARK"])
if slow == "export":
    from ssl_aug.export import writer
    _write, calls = writer.atomic_write_bytes, []
    def write(path, data, *a, **k):
        calls.append(path)
        if len(calls) == 2:  # one file written, the rest (and encoder.json) not yet
            mark.touch()
            time.sleep(30)
        return _write(path, data, *a, **k)
    writer.atomic_write_bytes = write
elif slow == "finetune":  # the second batch of epoch 2
    from ssl_aug.evaluation import finetune as ft
    _ce, calls = ft._soft_ce, []
    def soft_ce(*a):
        calls.append(1)
        if len(calls) == 7:  # 5 batches per epoch
            mark.touch()
            time.sleep(3)  # a handled signal does not cut a sleep short: keep it brief
        return _ce(*a)
    ft._soft_ce = soft_ce
else:  # "ablation" / "search": a training step of the run whose folder contains $SLOW_IN
    from ssl_aug.train import trainer
    _optimize = trainer.Trainer.optimize
    def optimize(self, views):
        if os.environ["SLOW_IN"] in str(self.run_dir) and self.step >= 1:
            mark.touch()
            time.sleep(0.5)
        return _optimize(self, views)
    trainer.Trainer.optimize = optimize
from ssl_aug.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _ssl_aug(*args: str, slow: str | None = None, mark: Path | None = None, slow_in: str = "",
             cwd: Path | None = None) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "ssl_aug", *args]
    if slow:
        env.update(SLOW=slow, PHASE_MARK=str(mark), SLOW_IN=slow_in)
        command = [sys.executable, "-c", SLOW, *args]
    return subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _signal_at_mark(proc: subprocess.Popen, mark: Path, signum: int) -> list[str]:
    deadline = time.monotonic() + 240
    while not mark.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the slowed-down place was never reached"
        time.sleep(0.01)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    return [x for x in err.splitlines() if x.strip() and not x.startswith("warning: ")]


def _finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return out


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trained")
    proc = train_cli(_recipe(tmp), tmp / "run")
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-2000:]
    return tmp / "run"


def test_sigterm_during_an_export_leaves_no_partial_file_and_a_rerun_completes_it(trained_run, tmp_path):
    reference_run = _ssl_aug("export", str(trained_run), "--out", str(tmp_path / "reference"))  # runs alongside
    out, mark = tmp_path / "export", tmp_path / "mark"
    proc = _ssl_aug("export", str(trained_run), "--out", str(out), slow="export", mark=mark)
    lines = _signal_at_mark(proc, mark, signal.SIGTERM)
    assert proc.returncode == 143 and len(lines) == 1, lines
    assert "SIGTERM" in lines[0] and "same command" in lines[0] and "Traceback" not in lines[0]
    assert not (out / "encoder.json").exists()  # an unfinished export never looks complete
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp") or p.name.startswith(".")]
    _finish(_ssl_aug("export", str(trained_run), "--out", str(out)))
    _finish(reference_run)
    reference = json.loads((tmp_path / "reference" / "encoder.json").read_text())["files"]
    files = json.loads((out / "encoder.json").read_text())["files"]
    assert files.keys() == reference.keys()
    for name, entry in reference.items():  # the same bytes (the torch.export archive: the same program)
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == files[name]["sha256"], name
        if name != "encoder.pt2":
            assert files[name] == entry, name
    x = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    a, b = (torch.export.load(str(d / "encoder.pt2")).module()(x) for d in (tmp_path / "reference", out))
    assert torch.equal(a, b)


def _ablation_spec(tmp_path: Path) -> Path:
    text = ABLATION_SPEC.replace("seeds = 2", "seeds = 1").replace('"eval.invariance" = true\n', "")
    path = tmp_path / "spec.toml"
    path.write_text(text.format(out=(tmp_path / "out").as_posix()))
    return path


def _table(folder: Path) -> list[dict]:
    with open(folder / "results.csv", newline="") as f:
        return [{k: v for k, v in row.items() if not k.endswith("_time_s")} for row in csv.DictReader(f)]


@pytest.mark.slow
def test_sigterm_inside_an_ablation_cell_then_continue(tmp_path, signum=signal.SIGTERM, code=143):
    """SIGINT takes the same path (its exit status, 130, is tested with training in test_signal_phases)."""
    reference = tmp_path / "reference"
    reference.mkdir()
    reference_run = _ssl_aug("ablate", str(_ablation_spec(reference)), "--no-progress")  # runs alongside
    spec, mark = _ablation_spec(tmp_path), tmp_path / "mark"
    proc = _ssl_aug("ablate", str(spec), "--no-progress", slow="ablation", mark=mark, slow_in="no_color_jitter")
    lines = _signal_at_mark(proc, mark, signum)
    assert proc.returncode == code and len(lines) == 1, lines
    line = lines[0]
    assert signal.Signals(signum).name in line and "cell 'no_color_jitter' seed 0" in line, line
    assert "1 of 2 runs finished" in line and "same command" in line and "last.pt" in line, line
    assert not (tmp_path / "out" / "results.csv").exists()
    _finish(_ssl_aug("ablate", str(spec), "--no-progress"))
    _finish(reference_run)
    assert _table(tmp_path / "out") == _table(reference / "out")


@pytest.mark.slow
def test_sigterm_inside_a_search_trial_then_continue(tmp_path):
    from ssl_aug.workflows.search import load_search
    from ssl_aug.workflows.search.study import finished_trials, open_study

    ref_spec, ref_out = tiny_spec(tmp_path, trials=2, name="reference")
    reference_run = _ssl_aug("search", str(ref_spec), "--no-progress")  # runs alongside
    spec, out = tiny_spec(tmp_path, trials=2)
    mark = tmp_path / "mark"
    proc = _ssl_aug("search", str(spec), "--no-progress", slow="search", mark=mark, slow_in="trial_0000")
    lines = _signal_at_mark(proc, mark, signal.SIGTERM)
    assert proc.returncode == 143 and len(lines) == 1, lines
    assert "search stopped in trial 0" in lines[0] and "0 of 2 trials finished" in lines[0], lines
    assert "same command" in lines[0]
    study = open_study(load_search(spec), out)
    assert not finished_trials(study)  # the stopped trial is no result
    _finish(_ssl_aug("search", str(spec), "--no-progress"))
    done = finished_trials(open_study(load_search(spec), out))
    assert len(done) == 2
    resumed = [t for t in done if t.user_attrs.get("resumed_from") == 0]
    assert len(resumed) == 1 and resumed[0].user_attrs["run_dir"].endswith("trial_0000")
    _finish(reference_run)
    ref = {t.number: t.value for t in finished_trials(open_study(load_search(ref_spec), ref_out))}
    assert resumed[0].value == ref[0]  # the stopped base-point trial resumed exactly


def test_sigterm_during_finetuning_then_continue(tmp_path, signum=signal.SIGTERM, code=143):
    args = ["finetune", "random:small_cnn", "epochs=3", "label_fraction=0.03", "batch_size=32", "--data", "embedded",
            "--test-subset", "100", "--no-progress"]
    reference_run = _ssl_aug(*args, "--output-dir", str(tmp_path / "reference"))  # runs alongside
    out, mark = tmp_path / "out", tmp_path / "mark"
    proc = _ssl_aug(*args, "--output-dir", str(out), slow="finetune", mark=mark)
    lines = _signal_at_mark(proc, mark, signum)
    assert proc.returncode == code and len(lines) == 1, lines
    assert signal.Signals(signum).name in lines[0] and "fine-tuning stopped in epoch 2" in lines[0], lines
    assert "state after epoch 1 is kept" in lines[0] and "same command" in lines[0], lines
    run = out / "none" / "seed0"
    assert not (run / "finetune.json").exists() and len((run / "metrics.jsonl").read_text().splitlines()) == 1
    _finish(_ssl_aug(*args, "--output-dir", str(out)))
    _finish(reference_run)
    done, ref = (json.loads((d / "none" / "seed0" / "finetune.json").read_text()) for d in (out, tmp_path / "reference"))
    assert done == ref
