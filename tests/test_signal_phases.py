"""Signals outside the training loop, with real signals to real processes: during data preparation, during
a checkpoint write, during the final evaluation, and a quick double Ctrl-C. Each ends with one line
saying what is saved and how to continue; continuing gives the uninterrupted run's results."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from test_faults import RECIPE, final_state

pytest.importorskip("ssl_aug.models.small_cnn")

# The real CLI with one phase slowed down: $SLOW_PHASE names it; the phase touches $PHASE_MARK when it
# has started, then sleeps, so the test signals the process inside that phase.
SLOW_PHASE = r"""
import os, sys, time
from pathlib import Path
phase, mark = os.environ.get("SLOW_PHASE"), os.environ.get("PHASE_MARK")
def wait():
    Path(mark).touch()
    time.sleep(30)
from ssl_aug import io
from ssl_aug.workflows import experiment
from ssl_aug.train import trainer
if phase == "data":
    _load = experiment.load_training_data
    def load(*a, **k):
        wait()
        return _load(*a, **k)
    experiment.load_training_data = load
elif phase == "evaluation":
    _eval = experiment.evaluate_backbone
    def evaluate(*a, **k):
        wait()
        return _eval(*a, **k)
    experiment.evaluate_backbone = evaluate
elif phase == "checkpoint":
    import torch
    _save = torch.save
    def save(obj, f, *a, **k):
        if obj.get("step") == 2:
            wait_short = Path(mark)
            wait_short.touch()
            time.sleep(1.5)
        return _save(obj, f, *a, **k)
    torch.save = save
elif phase == "training":
    _optimize = trainer.Trainer.optimize
    def slow(self, views):
        if self.step >= 1:
            Path(mark).touch()
        time.sleep(0.3)
        return _optimize(self, views)
    trainer.Trainer.optimize = slow
from ssl_aug.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _recipe(tmp: Path) -> Path:
    path = tmp / "recipe.toml"
    text = RECIPE.format(root=tmp / "data", epochs=1).replace("final_knn = false", "final_knn = true\nknn_k = 5")
    path.write_text(text.replace("checkpoint_every = 1", "checkpoint_every = 0"))
    return path


def _cli(recipe: Path, run: Path, *extra: str, phase: str | None = None, mark: Path | None = None):
    args = ["train", str(recipe), f"output_dir={json.dumps(str(run))}", "--no-progress", *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1", SSL_AUG_CACHE=str(recipe.parent / "cache"))
    if phase:
        env.update(SLOW_PHASE=phase, PHASE_MARK=str(mark))
        return subprocess.Popen([sys.executable, "-c", SLOW_PHASE, *args], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    return subprocess.Popen([sys.executable, "-m", "ssl_aug", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _signal_in_phase(proc: subprocess.Popen, mark: Path, signum: int, timeout: float = 120) -> tuple[str, list]:
    deadline = time.monotonic() + timeout
    while not mark.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "the phase never started"
        time.sleep(0.01)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    return out, [x for x in err.splitlines() if x.strip() and not x.startswith("warning: ")]  # sanity warnings are not errors


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reference")
    recipe = _recipe(tmp)
    proc = _cli(recipe, tmp / "run")
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-2000:]
    return recipe, tmp / "run"


def _same_results(a: Path, b: Path) -> None:
    ea, eb = (json.loads((r / "eval.json").read_text()) for r in (a, b))
    assert eb["final_loss"] is not None
    for key in ea:
        if not key.endswith("_time_s"):
            assert ea[key] == eb[key], key
    for key, value in final_state(a)["model"].items():
        assert torch.equal(value, final_state(b)["model"][key]), key


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143),
                                          pytest.param(signal.SIGINT, 130, marks=pytest.mark.slow)])
def test_signal_during_the_final_evaluation_then_resume(reference, tmp_path, signum, code):
    recipe, ref = reference
    run, mark = tmp_path / "run", tmp_path / "mark"
    out, lines = _signal_in_phase(_cli(recipe, run, phase="evaluation", mark=mark), mark, signum)
    assert len(lines) == 1 and "final evaluation" in lines[0] and "--resume" in lines[0], lines
    assert signal.Signals(signum).name in lines[0] and str(run / "checkpoints" / "last.pt") in lines[0]
    assert not (run / "eval.json").exists()
    resumed = _cli(recipe, run, "--resume")
    _, err = resumed.communicate(timeout=240)
    assert resumed.returncode == 0, err[-2000:]
    _same_results(ref, run)


@pytest.mark.slow
def test_sigterm_while_preparing_the_data(reference, tmp_path):
    recipe, ref = reference
    run, mark = tmp_path / "run", tmp_path / "mark"
    proc = _cli(recipe, run, phase="data", mark=mark)
    out, lines = _signal_in_phase(proc, mark, signal.SIGTERM)
    assert proc.returncode == 143 and len(lines) == 1, lines
    assert "preparing the run" in lines[0] and "same command" in lines[0] and "Traceback" not in lines[0]
    again = _cli(recipe, run)
    _, err = again.communicate(timeout=240)
    assert again.returncode == 0, err[-2000:]
    _same_results(ref, run)


@pytest.mark.slow
def test_sigterm_during_a_checkpoint_write_then_resume(reference, tmp_path):
    """The signal lands inside torch.save: the write completes, the run stops after that step."""
    recipe, ref = reference
    run, mark = tmp_path / "run", tmp_path / "mark"
    proc = _cli(recipe, run, "train.checkpoint_every=2", phase="checkpoint", mark=mark)
    out, lines = _signal_in_phase(proc, mark, signal.SIGTERM)
    assert proc.returncode == 143 and len(lines) == 1 and "SIGTERM" in lines[0] and "--resume" in lines[0], lines
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["step"] >= 2
    assert not list((run / "checkpoints").glob(".*.tmp"))
    resumed = _cli(recipe, run, "train.checkpoint_every=2", "--resume")
    _, err = resumed.communicate(timeout=240)
    assert resumed.returncode == 0, err[-2000:]
    _same_results(ref, run)


def test_quick_double_ctrl_c_prints_no_traceback(tmp_path):
    recipe = _recipe(tmp_path)
    run, mark = tmp_path / "run", tmp_path / "mark"
    proc = _cli(recipe, run, phase="training", mark=mark)
    deadline = time.monotonic() + 120
    while not mark.exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Exception ignored" not in err, err


SLOW_PACK = r"""
import os, sys, time
from pathlib import Path
from ssl_aug.data import imagefolder
_decode = imagefolder.decode_image
def decode(path, size, *rest):
    if path.endswith("b.png"):  # the shard of class a is being packed; class b's image waits
        Path(os.environ["PHASE_MARK"]).touch()
        time.sleep(3)
    return _decode(path, size, *rest)
imagefolder.decode_image = decode
from ssl_aug.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_while_packing_an_image_folder(tmp_path):
    from PIL import Image

    for cls in ("a", "b"):
        (tmp_path / "src" / cls).mkdir(parents=True)
        Image.new("RGB", (9, 7), (10, 200, 30)).save(tmp_path / "src" / cls / f"{cls}.png")
    mark, dst = tmp_path / "mark", tmp_path / "packed"
    args = ["data", "pack", str(tmp_path / "src"), str(dst), "--size", "8", "--shard-size", "1", "--workers", "1"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PHASE_MARK=str(mark))
    proc = subprocess.Popen([sys.executable, "-c", SLOW_PACK, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _, lines = _signal_in_phase(proc, mark, signal.SIGTERM)
    # the progress bar has no newline of its own: the message follows it on the same line
    lines = [x[x.index("ssl-aug:"):] if "ssl-aug:" in x else x for x in lines]
    lines = [x for x in lines if "%|" not in x]
    assert proc.returncode == 143 and len(lines) == 1, lines
    assert "SIGTERM" in lines[0] and "run the same command again" in lines[0]
    assert not list(dst.glob(".*.tmp")) and not (dst / "meta.json").exists()  # no partial pack claimed complete
    again = subprocess.run([sys.executable, "-m", "ssl_aug", *args, "--quiet"], env=env, capture_output=True,
                           text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert json.loads((dst / "meta.json").read_text())["images"] == 2
