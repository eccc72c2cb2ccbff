"""Distributed training with gloo on CPU: 2 ranks == 1 process on the same global batch; torchrun end to end.

The equality check uses fixed, pre-made views (no view RNG) and keeps BatchNorm in training mode:
every BatchNorm is converted to the cross-rank one (`convert_sync_batchnorm`: GroupBatchNorm on CPU,
since torch's SyncBatchNorm is CUDA-only), so batch statistics cover the global batch on both sides.
"""

from __future__ import annotations

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
                             timeout=__import__("datetime").timedelta(seconds=60))
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
