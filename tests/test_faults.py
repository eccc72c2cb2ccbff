"""Fault tolerance: kill -9 at random points (one inside a checkpoint write), resume, and end with weights
bit-identical to an uninterrupted run; checkpoints under their final names always load; disk-full and
permission errors while writing a checkpoint give one clear error and keep the previous checkpoint.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import ssl_aug.checkpoint as ckpt_mod
from ssl_aug.checkpoint import latest_checkpoint, load_checkpoint, step_checkpoints
from ssl_aug.errors import SslAugError

pytest.importorskip("ssl_aug.models.small_cnn")

STEPS_PER_EPOCH, EPOCHS = 5, 4  # 80 images / batch 16
TOTAL = STEPS_PER_EPOCH * EPOCHS

RECIPE = """
seed = 7
device = "cpu"
[data]
name = "embedded"
root = "{root}"
options = {{n_per_class = 8, size = 16}}
[model]
backbone = "small_cnn"
[method]
name = "simclr"
proj_hidden_dim = 16
proj_dim = 8
[augment]
size = 16
[train]
epochs = {epochs}
batch_size = 16
lr = 0.1
log_every = 1
checkpoint_every = 1
keep_checkpoints = 3
threads = 1
[eval]
final_knn = false
"""

# Runs the real CLI with torch.save slowed down: half of the checkpoint bytes are written and synced, a
# marker file is created, then it sleeps, so the test can kill -9 the process in the middle of a write.
SLOW_WRITE = r"""
import io, os, sys, time, torch
_save = torch.save
def slow_save(obj, f, *args, **kwargs):
    buf = io.BytesIO()
    _save(obj, buf, *args, **kwargs)
    data = buf.getvalue()
    f.write(data[: len(data) // 2]); f.flush(); os.fsync(f.fileno())
    open(os.environ["SLOW_WRITE_MARK"], "w").close()
    time.sleep(60)
    f.write(data[len(data) // 2 :])
torch.save = slow_save
from ssl_aug.cli import main
sys.exit(main(sys.argv[1:]))
"""


def write_recipe(tmp: Path, epochs: int = EPOCHS) -> Path:
    path = tmp / "recipe.toml"
    path.write_text(RECIPE.format(root=tmp / "data", epochs=epochs))
    return path


def launch(recipe: Path, run: Path, resume: bool, slow_write_mark: Path | None = None) -> subprocess.Popen:
    args = ["train", str(recipe), f"output_dir={json.dumps(str(run))}", "--no-progress"] + (["--resume"] if resume else [])
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if slow_write_mark is not None:
        env["SLOW_WRITE_MARK"] = str(slow_write_mark)
        cmd = [sys.executable, "-c", SLOW_WRITE, *args]
    else:
        cmd = [sys.executable, "-m", "ssl_aug", *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def newest_step(run: Path) -> int:
    steps = [int(p.stem.split("_")[1]) for p in step_checkpoints(run / "checkpoints")]
    return max(steps, default=0)


def kill_when(proc: subprocess.Popen, condition, timeout: float = 60.0) -> None:
    """Poll `condition()` every 2 ms; when true, SIGKILL the process (it must not have finished)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"run ended before the kill point (rc={proc.returncode}): {proc.stderr.read()}"
        assert time.monotonic() < deadline, "kill point never reached"
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def assert_checkpoints_intact(run: Path) -> None:
    """Every file under a final name loads completely (temp files are the only partial ones)."""
    folder = run / "checkpoints"
    for path in step_checkpoints(folder):
        assert load_checkpoint(path)["step"] == int(path.stem.split("_")[1])
    if (folder / "last.pt").exists():
        load_checkpoint(folder / "last.pt")


def final_state(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)


def step_losses(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if r["type"] == "step"]
    assert len(steps) == len(set(steps)), "a step was logged twice"
    return {r["step"]: r["loss"] for r in rows if r["type"] == "step"}


def test_kill9_at_random_points_then_resume_is_bit_identical(tmp_path):
    recipe = write_recipe(tmp_path)
    reference = tmp_path / "reference"
    ref_proc = launch(recipe, reference, resume=False)  # uninterrupted, runs alongside the killed chain

    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    kill_steps = sorted(rng.sample(range(1, TOTAL - 4), 4))  # kill soon after these checkpoints appear
    run = tmp_path / "killed"
    kills = []
    for i, k in enumerate(kill_steps):
        target = max(k, newest_step(run) + 1)  # each resumed launch makes progress before its kill
        proc = launch(recipe, run, resume=i > 0)
        kill_when(proc, lambda: newest_step(run) >= target)
        assert_checkpoints_intact(run)
        kills.append(newest_step(run))

    # Fifth kill: inside a checkpoint write (half the bytes on disk under the temp name).
    mark = tmp_path / "half_written"
    proc = launch(recipe, run, resume=True, slow_write_mark=mark)
    kill_when(proc, mark.exists)
    temps = list((run / "checkpoints").glob(".step_*.tmp"))
    assert len(temps) == 1 and temps[0].stat().st_size > 0, temps
    with pytest.raises(SslAugError):
        load_checkpoint(temps[0])  # the half-written file really is partial ...
    assert_checkpoints_intact(run)  # ... and never sits under a final name
    before = newest_step(run)

    proc = launch(recipe, run, resume=True)
    assert proc.wait(timeout=120) == 0, proc.stderr.read()
    assert not list((run / "checkpoints").glob(".*.tmp")), "temp files of the killed writer were not cleaned up"
    assert before < TOTAL
    assert ref_proc.wait(timeout=120) == 0, ref_proc.stderr.read()

    ref, got = final_state(reference), final_state(run)
    assert got["step"] == ref["step"] == TOTAL, (seed, kills)
    assert ref["model"].keys() == got["model"].keys()
    for name, tensor in ref["model"].items():
        assert torch.equal(tensor, got["model"][name]), f"{name} differs (seed {seed}, kills after {kills})"
    for a, b in zip(ref["optimizer"]["state"].values(), got["optimizer"]["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert step_losses(run) == step_losses(reference)


# ----------------------------------------------------------------------------- write errors, in process
def _trainer(tmp_path, epochs=1, *overrides):
    from ssl_aug.config import load_recipe
    from ssl_aug.train import Trainer

    cfg = load_recipe(write_recipe(tmp_path, epochs), [f"output_dir={json.dumps(str(tmp_path / 'run'))}", *overrides])
    return Trainer(cfg, progress=False)


def _fail_after(monkeypatch, ok_writes: int, make_file):
    """Let `ok_writes` checkpoint files be written, then hand every checkpoint temp file to `make_file`."""
    real_fdopen = os.fdopen
    calls = {"n": 0}

    def is_checkpoint(fd) -> bool:
        try:
            return Path(os.readlink(f"/proc/self/fd/{fd}")).parent.name == "checkpoints"
        except OSError:  # no /proc: every written temp file counts
            return True

    def fdopen(fd, mode="r", *args, **kwargs):
        if "w" in mode and is_checkpoint(fd):
            calls["n"] += 1
            if calls["n"] > ok_writes:
                return make_file(fd, mode)
        return real_fdopen(fd, mode, *args, **kwargs)

    monkeypatch.setattr(ckpt_mod.os, "fdopen", fdopen)


def _disk_full(fd, mode):
    os.close(fd)
    if os.path.exists("/dev/full"):  # the kernel's real ENOSPC on write
        return open("/dev/full", mode)
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _no_permission(fd, mode):
    os.close(fd)
    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))


@pytest.mark.parametrize("fault, words", [(_disk_full, "No space left on device"),
                                          (_no_permission, "Permission denied")])
def test_write_error_keeps_previous_checkpoint(tmp_path, monkeypatch, fault, words):
    trainer = _trainer(tmp_path)
    _fail_after(monkeypatch, ok_writes=2, make_file=fault)  # steps 1 and 2 write, step 3 fails
    with pytest.raises(SslAugError) as info:
        trainer.fit()
    message = str(info.value)
    assert "\n" not in message and words in message and "previous checkpoint is kept" in message
    folder = tmp_path / "run" / "checkpoints"
    assert [p.name for p in step_checkpoints(folder)] == ["step_00000001.pt", "step_00000002.pt"]
    assert latest_checkpoint(tmp_path / "run") == folder / "last.pt"
    assert load_checkpoint(folder / "last.pt")["step"] == 2
    assert not list(folder.glob(".*.tmp"))  # the failed temp file is removed


def test_write_error_is_one_cli_line(tmp_path, monkeypatch, capsys):
    from ssl_aug.cli import main

    monkeypatch.setenv("SSL_AUG_CACHE", str(tmp_path / "cache"))
    _fail_after(monkeypatch, ok_writes=1, make_file=_disk_full)
    recipe = write_recipe(tmp_path, epochs=1)
    code = main(["train", str(recipe), f"output_dir={json.dumps(str(tmp_path / 'run'))}", "--no-progress"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and not line.startswith("warning: ")]
    assert code == 2 and len(err) == 1 and err[0].startswith("ssl-aug: error: could not write checkpoint"), err
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions; the fdopen test covers EACCES")
def test_read_only_checkpoint_folder(tmp_path):
    first = _trainer(tmp_path, 2)
    first.total_steps = 1  # stop after the first step's checkpoint, the recipe unchanged (a resume may not change it)
    first.fit()
    folder = tmp_path / "run" / "checkpoints"
    folder.chmod(0o555)
    try:
        again = _trainer(tmp_path, epochs=2)
        with pytest.raises(SslAugError, match="Permission denied"):
            again.fit(resume=True)
        assert load_checkpoint(folder / "last.pt")["step"] == 1
    finally:
        folder.chmod(0o755)
