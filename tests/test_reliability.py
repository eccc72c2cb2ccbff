"""Nothing a user has is lost or silently wrong: finite checkpoints only, one writer per run folder,
full disks (a real small tmpfs where root can mount one) and stale locks of killed runs."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ssl_aug.checkpoint import load_checkpoint, nonfinite_flag, step_checkpoints
from ssl_aug.errors import SslAugError
from test_faults import final_state, step_losses, write_recipe

pytest.importorskip("ssl_aug.models.small_cnn")

# The real CLI with slowed optimiser steps (numerics untouched); with $STEP_GATE set, every step after
# the first waits until that file exists, so a test decides when the run may go on.
SLOW_STEPS = r"""
import os, sys, time
from ssl_aug.train import trainer
_optimize = trainer.Trainer.optimize
def slow(self, views):
    time.sleep(0.2)
    gate = os.environ.get("STEP_GATE")
    while gate and self.step >= 1 and not os.path.exists(gate):
        time.sleep(0.05)
    return _optimize(self, views)
trainer.Trainer.optimize = slow
from ssl_aug.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _cli(recipe: Path, run: Path, *extra: str, slow: bool = False, env: dict | None = None) -> subprocess.Popen:
    args = ["train", str(recipe), f"output_dir={json.dumps(str(run))}", "--no-progress", *extra]
    cmd = [sys.executable, "-c", SLOW_STEPS, *args] if slow else [sys.executable, "-m", "ssl_aug", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _all_finite(ckpt: dict) -> bool:
    tensors = list(ckpt["model"].values())
    tensors += [v for s in ckpt["optimizer"]["state"].values() for v in s.values() if isinstance(v, torch.Tensor)]
    return not bool(nonfinite_flag(tensors))


# ----------------------------------------------------------------------------- finite or nothing
def test_nonfinite_flag_finds_nan_inf_in_any_tensor():
    ok = [torch.zeros(3), torch.ones(2, 2), torch.arange(4)]  # integer tensors are never non-finite
    assert not bool(nonfinite_flag(ok))
    assert bool(nonfinite_flag(ok + [torch.tensor([1.0, math.nan])]))
    assert bool(nonfinite_flag([torch.tensor([-math.inf]).half()]))
    assert not bool(nonfinite_flag([]))


@pytest.mark.parametrize("key, value", [("lr", math.inf), ("momentum", math.nan)])
def test_nonfinite_update_never_reaches_a_checkpoint(tmp_path, key, value):
    """The recipe check refuses these values up front (test_bad_inputs); here they are forced past it into
    the trainer, as a diverging run would produce them: no checkpoint file ever holds a NaN/inf."""
    from trainer_fixtures import tiny_config, tiny_data

    from ssl_aug.train import Trainer
    from ssl_aug.train.trainer import NonFiniteLossError

    cfg = tiny_config(tmp_path, checkpoint_every=1, log_every=50)  # the loss itself is read rarely
    setattr(cfg.train, key, value)
    with pytest.raises(NonFiniteLossError) as info:
        Trainer(cfg, progress=False, train_data=tiny_data()).fit()
    message = str(info.value)
    assert "\n" not in message and "NaN/inf" in message
    files = list((tmp_path / "run" / "checkpoints").glob("*.pt"))
    for path in files:
        assert _all_finite(torch.load(path, weights_only=True)), path
    if files:  # momentum=nan: step 1 is still finite (the momentum buffer starts as the gradient)
        assert "last good checkpoint kept" in message and str(tmp_path / "run" / "checkpoints") in message
    assert not list((tmp_path / "run" / "checkpoints").glob(".*.tmp"))


# ----------------------------------------------------------------------------- one writer per run folder
def _wait_for_steps(proc: subprocess.Popen, run: Path, n: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        path = run / "metrics.jsonl"
        if path.exists() and sum('"type": "step"' in x for x in path.read_text().splitlines()) >= n:
            return
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "training never started"
        time.sleep(0.02)


@pytest.mark.slow
def test_second_run_into_a_busy_folder_is_refused_and_the_first_is_intact(tmp_path):
    recipe = write_recipe(tmp_path, epochs=1)
    reference = _cli(recipe, tmp_path / "reference")
    run = tmp_path / "run"
    gate = tmp_path / "go_on"
    first = _cli(recipe, run, slow=True, env={"STEP_GATE": str(gate)})
    _wait_for_steps(first, run, 1)  # config.json, the first step and its checkpoint are written
    for extra in ((), ("--resume",)):  # a fresh start and a resume into the busy folder
        second = _cli(recipe, run, *extra)
        _, err = second.communicate(timeout=120)
        lines = [x for x in err.splitlines() if x.strip() and not x.startswith("warning: ")]
        assert second.returncode == 2 and len(lines) == 1, err
        assert f"run folder {run} is in use by pid {first.pid}" in lines[0] and "Traceback" not in err
    gate.touch()
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert reference.wait(timeout=120) == 0
    assert step_losses(run) == step_losses(tmp_path / "reference")  # every step once, nothing interleaved
    assert final_state(run)["step"] == 5


def test_lock_names_its_holder_and_dies_with_it(tmp_path):
    from ssl_aug.runlock import RunFolderBusy, hold_run_folder

    code = ("import sys, time\nfrom ssl_aug.runlock import hold_run_folder\n"
            "with hold_run_folder(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunFolderBusy, match=f"in use by pid {holder.pid}"):
            with hold_run_folder(tmp_path / "run"):
                pass
    finally:
        holder.kill()
        holder.wait()
    with hold_run_folder(tmp_path / "run"):  # the kernel dropped the killed holder's lock
        with hold_run_folder(tmp_path / "run"):  # re-entrant within one process
            pass


@pytest.mark.slow
def test_stale_lock_of_a_killed_run_is_taken_over_saying_so(tmp_path):
    recipe = write_recipe(tmp_path, epochs=1)
    run = tmp_path / "run"
    first = _cli(recipe, run, slow=True, env={"STEP_GATE": str(tmp_path / "never")})
    _wait_for_steps(first, run, 1)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    holder = json.loads((run / ".ssl_aug.lock").read_text())
    assert holder["pid"] == first.pid  # the killed run left its name behind ...
    resumed = _cli(recipe, run, "--resume")
    _, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    assert f"locked by a run that ended without releasing it (pid {first.pid}" in err and "taking it over" in err
    assert (run / ".ssl_aug.lock").read_text() == ""  # ... the finished run released it cleanly


# ----------------------------------------------------------------------------- a real full disk
@pytest.fixture
def small_tmpfs(tmp_path):
    """A 5 MiB tmpfs (room for one small_cnn checkpoint of ~3 MiB, not two); skipped where it cannot be mounted."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root; the fault-injecting writer tests (test_faults) cover this")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=5m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


@pytest.mark.slow
def test_full_disk_during_a_checkpoint_then_resume_after_space_is_freed(tmp_path, small_tmpfs):
    recipe = write_recipe(tmp_path, epochs=1)
    cache = {"SSL_AUG_CACHE": str(tmp_path / "cache")}
    reference = _cli(recipe, tmp_path / "reference", "train.keep_checkpoints=1", env=cache)
    run = small_tmpfs / "run"
    proc = _cli(recipe, run, "train.keep_checkpoints=1", env=cache)
    _, err = proc.communicate(timeout=120)
    lines = [x for x in err.splitlines() if x.strip() and not x.startswith("warning: ")]
    assert proc.returncode == 2 and len(lines) == 1, err
    assert lines[0].startswith(f"ssl-aug: error: could not write checkpoint {run / 'checkpoints'}/step_000000")
    assert "No space left on device" in lines[0] or "inline_container" in lines[0]
    assert " free)" in lines[0] and "previous checkpoint is kept" in lines[0]
    folder = run / "checkpoints"
    assert not list(folder.glob(".*.tmp")), "a temp file was left on the full disk"
    saved = load_checkpoint(folder / "last.pt")["step"]
    assert saved >= 1 and [p.name for p in step_checkpoints(folder)] == [f"step_{saved:08d}.pt"]

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_tmpfs)], check=True)  # space freed
    resumed = _cli(recipe, run, "train.keep_checkpoints=1", "--resume", env=cache)
    _, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    assert reference.wait(timeout=120) == 0
    a, b = final_state(tmp_path / "reference"), final_state(run)
    assert a["step"] == b["step"] == 5
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert step_losses(run) == step_losses(tmp_path / "reference")


def test_metrics_append_on_a_full_disk_is_one_line(tmp_path, monkeypatch):
    from ssl_aug import io as io_mod
    from ssl_aug.train.metrics import MetricsLog

    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.append({"step": 1})
    monkeypatch.setattr(io_mod.os, "write", lambda fd, data: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(SslAugError, match="could not write metrics log .*No space left on device .* free"):
        log.append({"step": 2})
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1}\n'
