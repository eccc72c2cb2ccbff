"""Two torchrun "nodes" on this machine (--nnodes 2, c10d rendezvous on localhost, gloo), each with its own
output folder as on nodes without shared storage: SyncBN on by default, a SIGTERM stops every worker with
a checkpoint on both nodes, --resume agrees on one checkpoint (sent to a node that lacks it, refused in one
line when the nodes hold different ones), never hangs."""

from __future__ import annotations

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

RECIPE = """
seed = 5
device = "cpu"
[data]
name = "embedded"
root = "{root}"
options = {{n_per_class = 40, size = 16}}
[model]
backbone = "small_cnn"
[method]
name = "simclr"
proj_hidden_dim = 16
proj_dim = 8
[augment]
size = 16
[train]
epochs = 200
max_steps = {max_steps}
batch_size = 16
lr = 0.1
log_every = 1
checkpoint_every = 0
threads = 1
[eval]
final_knn = false
"""


MAX_STEPS = 300  # far more than the steps before the SIGTERM lands, even on an idle fast machine


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(tmp: Path, recipe: Path, port: int, *extra: str) -> list[subprocess.Popen]:
    """Node 0 and node 1, one process each, output_dir node0/ and node1/ (no shared folder)."""
    procs = []
    for node in range(2):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
               f"--node-rank={node}", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}",
               "--rdzv-id=multinode-test", "-m", "ssl_aug", "train", str(recipe),
               f"output_dir={json.dumps(str(tmp / f'node{node}'))}", "--no-progress", *extra]
        env = dict(os.environ, OMP_NUM_THREADS="1", SSL_AUG_TEST_NODE=str(node))
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      start_new_session=True))
    return procs


def _finish(procs, timeout=120) -> list[tuple[int, str]]:
    out = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                os.killpg(q.pid, signal.SIGKILL)
            pytest.fail("two-node run hung")
        out.append((p.returncode, err))
    return out


@pytest.mark.slow
def test_two_nodes_own_folders_sigterm_resume_and_disagreement(tmp_path):
    from ssl_aug.checkpoint import latest_checkpoint, load_checkpoint

    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RECIPE.format(root=tmp_path / "data", max_steps=MAX_STEPS))
    procs = _launch(tmp_path, recipe, _port())
    deadline = time.time() + 90
    metrics = tmp_path / "node0" / "metrics.jsonl"
    while time.time() < deadline and not (metrics.is_file() and '"type": "step"' in metrics.read_text()):
        time.sleep(0.2)
    start = time.time()
    for p in procs:  # what a scheduler does at preemption: SIGTERM to each node's torchrun
        os.kill(p.pid, signal.SIGTERM)
    results = _finish(procs, timeout=60)
    assert time.time() - start < 30, "workers did not stop within torchrun's 30 s grace period"
    assert all(code != 0 for code, _ in results)
    assert "SIGTERM: stopped after step" in results[0][1], results[0][1][-3000:]  # the worker's one line
    assert "ssl_aug" not in "".join(err.split("SignalException")[0][-200:] for _, err in results)
    ckpts = [latest_checkpoint(tmp_path / f"node{n}") for n in range(2)]
    assert all(ckpts), "each node keeps its own checkpoint"
    assert ckpts[0].read_bytes() == ckpts[1].read_bytes()
    step = load_checkpoint(ckpts[0])["step"]
    assert 0 < step < MAX_STEPS
    sd = load_checkpoint(ckpts[0])["model"]
    assert any("running_mean" in k for k in sd)
    assert load_checkpoint(ckpts[0])["config"]["model"]["sync_batchnorm"] == "auto"

    # node 1 lost its folder: it receives rank 0's checkpoint and both resume from it
    import shutil

    shutil.rmtree(tmp_path / "node1")
    results = _finish(_launch(tmp_path, recipe, _port(), "--resume"), timeout=120)
    assert [c for c, _ in results] == [0, 0], results[0][1][-2000:] + results[1][1][-2000:]
    a, b = (load_checkpoint(latest_checkpoint(tmp_path / f"node{n}")) for n in range(2))
    assert a["step"] == b["step"] == MAX_STEPS

    # the nodes hold different checkpoints: refused in one line on both, no hang
    ck1 = latest_checkpoint(tmp_path / "node1")
    state = load_checkpoint(ck1)
    state["step"] += 1000
    torch.save(state, ck1)
    results = _finish(_launch(tmp_path, recipe, _port(), "--resume"), timeout=120)
    for code, err in results:
        lines = [line for line in err.splitlines() if "different checkpoints" in line]
        assert code != 0 and len(lines) == 1 and "rank 0:" in lines[0] and "rank 1:" in lines[0], err[-2000:]
