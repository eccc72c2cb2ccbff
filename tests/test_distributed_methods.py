"""Multi-rank pieces of the newer methods, 2 ranks with gloo on CPU against one process on the global batch:
MoCo v2's per-rank queue and synchronised BatchNorm, DINO's centre all-reduce, VICReg / Barlow Twins gathering.

BatchNorm is converted to the cross-rank one (GroupBatchNorm on CPU) on the ranks, so batch statistics cover
the global batch, as plain BatchNorm does in the one-process reference.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp
import torch.nn.functional as F
from ssl_aug import distributed as dist
from ssl_aug.errors import SslAugError
from ssl_aug.losses.moco import moco_infonce
from ssl_aug.methods import build_method
from test_distributed import TinyBackbone, _free_port

WORLD = 2
N_GLOBAL = 8
N = N_GLOBAL // WORLD
TOL = 1e-5
GATHERED = ("vicreg", "barlow_twins", "dino")


def build(method: str, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    args = {"vicreg": dict(proj_hidden_dim=16, proj_dim=8, proj_layers=2),
            "barlow_twins": dict(proj_hidden_dim=16, proj_dim=8, proj_layers=2, lambd=0.05),
            "dino": dict(out_dim=12, hidden_dim=16, bottleneck_dim=8),
            "moco_v2": dict(proj_hidden_dim=16, proj_dim=8, queue_length=2 * 8, momentum=0.9)}[method]
    return build_method(method, TinyBackbone(), **args, **kw)


def make_views(method: str) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    sizes = [8, 8, 4, 4] if method == "dino" else [8, 8]  # DINO: 2 global + 2 local crops
    return [torch.randn(N_GLOBAL, 3, s, s, generator=g) for s in sizes]


def rank_queue(rank: int) -> torch.Tensor:
    """The fixed starting queue of a rank (8 rows of dimension 8)."""
    return F.normalize(torch.randn(8, 8, generator=torch.Generator().manual_seed(100 + rank)), dim=1)


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                             timeout=datetime.timedelta(seconds=60))
    try:
        for method in GATHERED:
            model = dist.convert_sync_batchnorm(build(method), "cpu").train()
            loss, _ = model([v[rank * N:(rank + 1) * N] for v in make_views(method)])
            loss.backward()
            mean_loss = dist.all_reduce_sum(loss.detach().clone()) / WORLD
            # gradients averaged over ranks by hand (what DDP does), so this checks the method alone
            grads = {k: dist.all_reduce_sum(p.grad.clone()) / WORLD for k, p in model.named_parameters()
                     if p.grad is not None}
            torch.save({"loss": mean_loss, "grads": grads,
                        "buffers": dict(model.named_buffers())}, Path(out_dir) / f"{method}_{rank}.pt")
        for method in ("dino", "moco_v2"):  # EMA targets hold frozen BatchNorm: DDP must still average gradients
            model = dist.convert_sync_batchnorm(build(method), "cpu").train()
            ddp = torch.nn.parallel.DistributedDataParallel(model)
            loss, _ = ddp([v[rank * N:(rank + 1) * N] for v in make_views(method)])
            loss.backward()
            torch.save({k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None},
                       Path(out_dir) / f"{method}_ddp_{rank}.pt")
        moco = build("moco_v2")
        error = ""
        try:  # per-rank BatchNorm is refused on several ranks
            moco.train()(make_views("moco_v2"))
        except SslAugError as exc:
            error = str(exc)
        moco = dist.convert_sync_batchnorm(build("moco_v2"), "cpu").train()
        assert moco.queue.queue.shape == (8, 8)  # queue_length 16 over 2 ranks
        moco.queue.queue.copy_(rank_queue(rank))
        loss, _ = moco([v[rank * N:(rank + 1) * N] for v in make_views("moco_v2")])
        torch.save({"loss": loss.detach(), "queue": moco.queue.queue.clone(), "pointer": moco.queue.pointer.clone(),
                    "key_buffers": dict(moco.key_backbone.named_buffers()), "error": error},
                   Path(out_dir) / f"moco_v2_{rank}.pt")
    finally:
        tdist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp_methods")
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, port, str(out))) for r in range(WORLD)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    for p in procs:
        if p.is_alive():
            p.kill()
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    return out


@pytest.mark.parametrize("method", GATHERED)
def test_gathered_statistics_equal_one_process(two_ranks, method):
    """VICReg / Barlow Twins gather embeddings, DINO all-reduces its centre: loss, gradients and buffers
    (DINO's centre included) on 2 ranks equal one process on the global batch."""
    model = build(method)
    model.train()
    loss, _ = model(make_views(method))
    loss.backward()
    for rank in range(WORLD):
        got = torch.load(two_ranks / f"{method}_{rank}.pt")
        assert torch.allclose(got["loss"], loss.detach(), atol=TOL, rtol=0), (method, got["loss"], loss)
        for name, p in model.named_parameters():
            if p.grad is None:
                continue
            scale = max(1.0, float(p.grad.abs().max()))  # float32 sums in another order: relative tolerance
            assert (got["grads"][name] - p.grad).abs().max() <= TOL * scale, f"{method} rank {rank} grad {name}"
        for name, buf in model.named_buffers():
            assert torch.allclose(got["buffers"][name].to(buf.dtype), buf, atol=TOL), f"{method} {name}"
    if method == "dino":
        assert model.center.abs().sum() > 0  # the centre really moved


def test_per_rank_statistics_differ_without_gathering():
    """Guard for the test above: per-rank VICReg statistics give another loss than the global batch."""
    views = make_views("vicreg")
    full = float(build("vicreg")(views)[0])
    local = [float(build("vicreg", gather=False)([v[r * N:(r + 1) * N] for v in views])[0]) for r in range(WORLD)]
    assert abs(sum(local) / WORLD - full) > 1e-3


def test_moco_queue_holds_its_own_ranks_keys_and_batchnorm_is_synchronised(two_ranks):
    model = build("moco_v2").train()
    views = make_views("moco_v2")
    with torch.no_grad():
        q = model.projector(model.backbone(torch.cat(views))).view(2, N_GLOBAL, -1)
        k = model.key_projector(model.key_backbone(torch.cat(views))).view(2, N_GLOBAL, -1)
    for rank in range(WORLD):
        got = torch.load(two_ranks / f"moco_v2_{rank}.pt")
        rows = slice(rank * N, (rank + 1) * N)
        expected = moco_infonce(q[0, rows], k[1, rows], rank_queue(rank), 0.2)
        assert torch.allclose(got["loss"], expected, atol=TOL), (rank, got["loss"], expected)
        torch.testing.assert_close(got["queue"][:N], F.normalize(k[1, rows], dim=1), atol=TOL, rtol=0)
        torch.testing.assert_close(got["queue"][N:], rank_queue(rank)[N:])  # the rest untouched
        assert int(got["pointer"]) == N
        for name, buf in model.key_backbone.named_buffers():  # key encoder BN saw the global batch
            assert torch.allclose(got["key_buffers"][name].to(buf.dtype), buf, atol=TOL), name
        assert "needs model.sync_batchnorm = true" in got["error"]


@pytest.mark.parametrize("method", ["dino", "moco_v2"])
def test_ddp_averages_gradients_of_methods_with_ema_targets(two_ranks, method):
    """A converted frozen BatchNorm (teacher / key encoder) must stay frozen: a trainable one never gets a
    gradient, so DDP's bucket never completes and each rank silently kept its own local gradient."""
    model = build(method).train()
    if method == "moco_v2":
        # the reference is the 2-rank run's own hand-averaged mean; here: the ranks must agree with each other
        grads = [torch.load(two_ranks / f"{method}_ddp_{r}.pt") for r in range(WORLD)]
        for name in grads[0]:
            torch.testing.assert_close(grads[0][name], grads[1][name], atol=TOL, rtol=0)
        return
    loss, _ = model(make_views(method))
    loss.backward()
    for rank in range(WORLD):
        got = torch.load(two_ranks / f"{method}_ddp_{rank}.pt")
        for name, p in model.named_parameters():
            if p.grad is not None:
                scale = max(1.0, float(p.grad.abs().max()))
                assert (got[name] - p.grad).abs().max() <= TOL * scale, f"{method} rank {rank} DDP grad {name}"


def test_converted_batchnorm_keeps_frozen_parameters_frozen():
    before = {name: p.requires_grad for name, p in build("dino").named_parameters()}
    after = {name: p.requires_grad for name, p in dist.convert_sync_batchnorm(build("dino"), "cpu").named_parameters()}
    assert after == before
    assert not after["teacher_backbone.net.1.weight"]
