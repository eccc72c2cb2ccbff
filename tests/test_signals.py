"""Preemption with real signals: SIGTERM / SIGINT to a real training process finish the step, write a
checkpoint, print where and how to resume, exit 143 / 130; --resume then ends bit-identical to an
uninterrupted run. With two ranks, a signal to one rank stops both at the same step."""

from __future__ import annotations

import datetime
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp

from test_faults import STEPS_PER_EPOCH, final_state, step_losses, write_recipe

pytest.importorskip("ssl_aug.models.small_cnn")

EPOCHS = 3  # 15 steps of 16 images

# The real CLI with every optimiser step slowed down (numerics untouched), so a signal lands mid-run.
SLOW_STEPS = r"""
import sys, time
from ssl_aug.train import trainer
_optimize = trainer.Trainer.optimize
def slow(self, views):
    time.sleep(0.15)
    return _optimize(self, views)
trainer.Trainer.optimize = slow
from ssl_aug.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _train(recipe: Path, run: Path, *extra: str, slow: bool = False) -> subprocess.Popen:
    args = ["train", str(recipe), f"output_dir={json.dumps(str(run))}", "train.checkpoint_every=0",
            "--no-progress", *extra]
    cmd = [sys.executable, "-c", SLOW_STEPS, *args] if slow else [sys.executable, "-m", "ssl_aug", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _logged_steps(run: Path) -> int:
    path = run / "metrics.jsonl"
    if not path.exists():
        return 0
    return sum('"type": "step"' in line for line in path.read_text().splitlines())


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run of the same recipe: (recipe, run dir)."""
    tmp = tmp_path_factory.mktemp("reference")
    recipe = write_recipe(tmp, epochs=EPOCHS)
    proc = _train(recipe, tmp / "run")
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-2000:]
    return recipe, tmp / "run"


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_checkpoints_mid_epoch_then_resume_is_bit_identical(reference, tmp_path, signum, code):
    recipe, ref_run = reference
    run = tmp_path / "run"
    proc = _train(recipe, run, slow=True)
    deadline = time.monotonic() + 120
    while _logged_steps(run) < 1:  # the first step is done: training is under way
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "training never started"
        time.sleep(0.01)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-2000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    last = run / "checkpoints" / "last.pt"
    step = torch.load(last, weights_only=True)["step"]
    assert signal.Signals(signum).name in lines[0] and str(last) in lines[0] and "--resume" in lines[0]
    assert f"after step {step}/" in lines[0]
    assert 1 <= step < STEPS_PER_EPOCH  # a mid-epoch checkpoint that only the signal could have written
    assert not (run / "eval.json").exists() and "results (all numbers in" not in out  # no results claimed

    resumed = _train(recipe, run, "--resume")
    _, err = resumed.communicate(timeout=240)
    assert resumed.returncode == 0, err[-2000:]
    a, b = final_state(ref_run), final_state(run)
    assert a["step"] == b["step"] == EPOCHS * STEPS_PER_EPOCH
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert step_losses(run) == step_losses(ref_run)


# ---------------------------------------------------------------------------- two ranks agree
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_worker(rank: int, port: int, out: str) -> None:
    from trainer_fixtures import tiny_config, tiny_data

    from ssl_aug.train import Trainer, TrainingInterrupted

    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                             timeout=datetime.timedelta(seconds=60))

    class SignalOnRankOne(Trainer):
        def optimize(self, views):
            if self.rank == 1 and self.step == 2:
                signal.raise_signal(signal.SIGTERM)  # only this rank gets it, in the middle of step 3
            return super().optimize(views)

    result = {"rank": rank}
    try:
        cfg = tiny_config(Path(out), checkpoint_every=0, epochs=2)
        SignalOnRankOne(cfg, progress=False, train_data=tiny_data(n=128)).fit()
        result["finished"] = True
    except TrainingInterrupted as exc:
        result.update(code=exc.code, step=exc.step, checkpoint=str(exc.checkpoint) if exc.checkpoint else None)
    finally:
        tdist.destroy_process_group()
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))


def test_a_signal_to_one_rank_stops_every_rank_at_the_same_step(tmp_path):
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_rank_worker, args=(r, port, str(tmp_path))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        if p.is_alive():
            p.kill()
    assert [p.exitcode for p in procs] == [0, 0]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    assert r0.get("code") == r1.get("code") == 143 and r0["step"] == r1["step"] == 3
    ckpt = torch.load(r0["checkpoint"], weights_only=True)
    assert ckpt["step"] == 3 and len(ckpt["ranks"]) == 2 and r1["checkpoint"] is None
