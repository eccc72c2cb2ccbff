"""Distributed training with gloo on CPU: 2 ranks == 1 process on the same global batch; torchrun end to end.

The equality check uses fixed, pre-made views (no view RNG) and keeps BatchNorm in training mode:
every BatchNorm is converted to the cross-rank one (`convert_sync_batchnorm`: GroupBatchNorm on CPU,
since torch's SyncBatchNorm is CUDA-only), so batch statistics cover the global batch on both sides.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp
from torch import nn

from ssl_aug import distributed as dist
from ssl_aug.methods import build_method

WORLD = 2
N_GLOBAL = 8  # images in the global batch; 4 per rank
TOL = 1e-5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TinyBackbone(nn.Module):
    """conv-BN-ReLU-pool: (N, 3, H, W) -> (N, 8); BatchNorm on purpose (it must be synced)."""

    feature_dim = 8

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x):
        return self.net(x)


def build(method: str, **kw) -> nn.Module:
    torch.manual_seed(0)
    if method == "simclr":
        return build_method("simclr", TinyBackbone(), proj_hidden_dim=16, proj_dim=8, temperature=0.5, **kw)
    return build_method("swav", TinyBackbone(), proj_hidden_dim=16, proj_dim=8, num_prototypes=6,
                        temperature=0.1, epsilon=0.05, freeze_prototypes_iters=0, **kw)


def make_views(method: str) -> list[torch.Tensor]:
    """Global batch of fixed views: SimCLR 2 x (8,3,8,8); SwAV 2 x (8,3,8,8) + 2 local x (8,3,4,4)."""
    g = torch.Generator().manual_seed(1)
    sizes = [8, 8] if method == "simclr" else [8, 8, 4, 4]
    return [torch.randn(N_GLOBAL, 3, s, s, generator=g) for s in sizes]


def reference(method: str) -> dict:
    """One process, the whole global batch, plain BatchNorm."""
    model = build(method)
    model.train()
    loss, _ = model(make_views(method))
    loss.backward()
    return {"loss": loss.detach(), "grads": {k: p.grad.clone() for k, p in model.named_parameters()},
            "buffers": {k: b.clone() for k, b in model.named_buffers()}}


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                             timeout=datetime.timedelta(seconds=60))
    try:
        n = N_GLOBAL // WORLD
        for method in ("simclr", "swav"):
            kw = {"gather": True} if method == "simclr" else {}
            model = dist.convert_sync_batchnorm(build(method, **kw), "cpu")
            ddp = nn.parallel.DistributedDataParallel(model)
            ddp.train()
            views = [v[rank * n:(rank + 1) * n] for v in make_views(method)]
            loss, _ = ddp(views)
            loss.backward()
            mean_loss = dist.all_reduce_sum(loss.detach().clone()) / WORLD
            torch.save({"loss": mean_loss, "grads": {k: p.grad for k, p in model.named_parameters()},
                        "buffers": dict(model.named_buffers())}, Path(out_dir) / f"{method}_{rank}.pt")
    finally:
        tdist.destroy_process_group()


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, port, str(out))) for r in range(WORLD)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=90)
    for p in procs:
        if p.is_alive():
            p.kill()
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    return out


@pytest.mark.parametrize("method", ["simclr", "swav"])
def test_two_ranks_equal_one_process(two_rank_results, method):
    ref = reference(method)
    for rank in range(WORLD):
        got = torch.load(two_rank_results / f"{method}_{rank}.pt")
        assert torch.allclose(got["loss"], ref["loss"], atol=TOL, rtol=0), (got["loss"], ref["loss"])
        assert got["grads"].keys() == ref["grads"].keys()
        for name, grad in ref["grads"].items():
            assert grad.abs().max() > 0, name  # every parameter really receives a gradient
            diff = (got["grads"][name] - grad).abs().max()
            assert diff <= TOL, f"{method} rank {rank} grad {name}: max diff {diff:.2e}"
        for name, buf in ref["buffers"].items():  # running BN statistics of the global batch
            assert torch.allclose(got["buffers"][name].to(buf.dtype), buf, atol=TOL), name


def test_without_gathering_the_loss_differs(two_rank_results):
    """Guard: the equality above needs gathered negatives; per-rank NT-Xent gives another loss."""
    ref = reference("simclr")
    model = build("simclr")
    n = N_GLOBAL // WORLD
    local = [model([v[r * n:(r + 1) * n] for v in make_views("simclr")])[0].detach() for r in range(WORLD)]
    assert abs(float(sum(local) / WORLD) - float(ref["loss"])) > 1e-3


def test_group_batchnorm_single_process_is_batchnorm():
    torch.manual_seed(0)
    bn = nn.Sequential(nn.BatchNorm2d(4), nn.BatchNorm1d(3))
    converted = dist.convert_sync_batchnorm(nn.Sequential(nn.BatchNorm2d(4)), "cpu")
    assert isinstance(converted[0], dist.GroupBatchNorm)
    x = torch.randn(5, 4, 3, 3)
    assert torch.equal(converted(x), bn[0](x))
    assert torch.equal(converted[0].running_var, bn[0].running_var)


# ----------------------------------------------------------------------------- torchrun end to end
TORCHRUN_RECIPE = """
seed = 5
device = "cpu"
[data]
name = "embedded"
root = "{root}"
options = {{n_per_class = 8, size = 16}}
[model]
backbone = "small_cnn"
sync_batchnorm = true
[method]
name = "simclr"
proj_hidden_dim = 16
proj_dim = 8
[augment]
size = 16
[train]
epochs = 2
batch_size = 16
lr = 0.1
log_every = 1
checkpoint_every = 2
keep_checkpoints = 10
threads = 1
[eval]
final_knn = false
"""


def torchrun(recipe: Path, run: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}",
           "-m", "ssl_aug", "train", str(recipe), f"output_dir={json.dumps(str(run))}", "--no-progress", *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=150)


def test_build_model_gathers_simclr_negatives_on_several_ranks(monkeypatch):
    pytest.importorskip("ssl_aug.models.small_cnn")
    from ssl_aug.config import config_from_dict
    from ssl_aug.train import build_model

    cfg = config_from_dict({"method": {"name": "simclr", "proj_hidden_dim": 8, "proj_dim": 4}})
    assert build_model(cfg).gather is False
    monkeypatch.setattr(dist, "world_size", lambda: 2)
    assert build_model(cfg).gather is True
    cfg.method["gather"] = False  # an explicit recipe value wins
    assert build_model(cfg).gather is False


@pytest.fixture(scope="module")
def torchrun_run(tmp_path_factory):
    """One uninterrupted 2-rank torchrun training (10 steps): (process, run dir, recipe)."""
    pytest.importorskip("ssl_aug.models.small_cnn")
    tmp = tmp_path_factory.mktemp("torchrun")
    recipe = tmp / "recipe.toml"
    recipe.write_text(TORCHRUN_RECIPE.format(root=tmp / "data"))
    proc = torchrun(recipe, tmp / "full")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, tmp / "full", recipe


def test_torchrun_two_ranks_trains_checkpoints_and_resumes_exactly(torchrun_run, tmp_path, capsys):
    """torchrun --nproc_per_node=2 with gloo and SyncBN (GroupBatchNorm): rank-0-only logging and
    checkpoints, per-rank state in the checkpoint, exact resume, other world sizes refused."""
    from ssl_aug.checkpoint import load_checkpoint
    from ssl_aug.cli import main

    _, full, recipe = torchrun_run
    total = 2 * (80 // 16)  # 2 epochs x (80 images / global batch 16 = 2 ranks x 8)
    rows = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["type"] == "step"] == list(range(1, total + 1))  # rank 0 logs, once

    ckpts = full / "checkpoints"
    last = load_checkpoint(ckpts / "last.pt")
    assert last["step"] == total and last["world_size"] == WORLD
    ranks = last["ranks"]
    assert [r["batch_source"]["rank"] for r in ranks] == [0, 1]
    assert not torch.equal(ranks[0]["rng"]["views"], ranks[1]["rng"]["views"])  # per-rank view seeds

    # Resume from the step-4 checkpoint with torchrun: the end state equals the uninterrupted run.
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    (resumed / "checkpoints" / "step_00000004.pt").write_bytes((ckpts / "step_00000004.pt").read_bytes())
    proc = torchrun(recipe, resumed, "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = load_checkpoint(resumed / "checkpoints" / "last.pt")
    assert got["step"] == total
    for name, tensor in last["model"].items():
        assert torch.equal(tensor, got["model"][name]), name

    # A different world size is refused with one clear line.
    code = main(["train", str(recipe), f"output_dir={json.dumps(str(resumed))}", "--resume", "--no-progress"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and not line.startswith("warning: ")]
    assert code == 2 and len(err) == 1 and "world size 2, this run has world size 1" in err[0], err


def test_torchrun_prints_results_once(torchrun_run):
    proc = torchrun_run[0]
    assert proc.stdout.count("results (all numbers in") == 1 and proc.stdout.count("estimate: ") == 1


def _nonfinite_worker(rank: int, port: int, out: str) -> None:
    from trainer_fixtures import tiny_config, tiny_data

    from ssl_aug.train import NonFiniteLossError, Trainer

    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                             timeout=datetime.timedelta(seconds=30))

    class NanOnRankOne(Trainer):
        def optimize(self, views):
            loss, stats = super().optimize(views)
            if self.rank == 1 and self.step == 1:
                loss = loss * float("nan")  # only rank 1 sees a non-finite loss at its 2nd step
            return loss, stats

    result = {"rank": rank}
    try:
        cfg = tiny_config(Path(out), log_every=2, checkpoint_every=0)
        NanOnRankOne(cfg, progress=False, train_data=tiny_data(n=128)).fit()
    except NonFiniteLossError as exc:
        result["error_step"] = int(str(exc).split("before step ")[1].split(":")[0])
    finally:
        tdist.destroy_process_group()
    Path(out, f"nan{rank}.json").write_text(json.dumps(result))


def test_nonfinite_loss_on_one_rank_stops_every_rank(tmp_path):
    """The non-finite stop is agreed across ranks: no rank is left waiting in the next all-reduce."""
    pytest.importorskip("ssl_aug.models.small_cnn")
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_nonfinite_worker, args=(r, port, str(tmp_path))) for r in range(WORLD)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=90)
        if p.is_alive():
            p.kill()
    assert [p.exitcode for p in procs] == [0, 0]
    results = [json.loads((tmp_path / f"nan{r}.json").read_text()) for r in range(WORLD)]
    assert [r.get("error_step") for r in results] == [2, 2]
