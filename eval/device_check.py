"""Device check: the training-device path end to end, as one script (`eval/device_check.sh`).

On a CUDA machine (<= 8 minutes on one GPU) it checks: view parity CPU vs device (exact and fast, three
presets, RandAugment sub-policies as masks); every registered method (and streamed shards) for a few bf16
training steps under torch.cuda.set_sync_debug_mode("error"); the trainer for amp none / bf16 / fp16 with
clipping, channels_last, a checkpoint and a resume; two gloo ranks on one device, and two NCCL ranks when
two GPUs are present, against one rank on the global batch; features on the device into faiss kNN; export
and reload; SimCLR cifar_resnet18 batch 512 img/s and the views' share of the step (CUDA events); views
against torchvision v2 per sample and stock kornia; streamed shards (nvjpeg decode, crops and SimCLR views on
the GPU) beside NVIDIA DALI's pipeline on one generated pack. Missing optional packages (faiss, kornia,
torchvision, DALI) give skip rows; nothing needs the network. --cpu-dry-run: tiny sizes on the CPU (CI),
the sync audit on the meta device, CUDA-only checks skipped. Prints one table; a device run rewrites the
dated "device" section of BENCHMARKS.md. Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from device_views import available, check_views_vs_baselines, random_images
from ssl_aug.benchmarks import markdown_table, update_benchmarks_md

Row = list  # [check, detail, result, status]


class Sizes:
    """Problem sizes: real ones on a device, tiny ones for --cpu-dry-run."""

    def __init__(self, dry: bool):
        self.dry = dry
        self.parity_n = 8 if dry else 256
        self.imagenet = (64, 56) if dry else (256, 224)  # (input side, view size)
        self.train_batch, self.train_images = (16, 48) if dry else (256, 1024)
        self.bench_backbone = "small_cnn" if dry else "cifar_resnet18"
        self.bench_batch, self.bench_steps, self.bench_warmup = (32, 2, 1) if dry else (512, 30, 5)
        self.knn_images = 256 if dry else 10000
        self.view_rounds = 2 if dry else 5
        self.sync_steps = 2 if dry else 5


def _status(ok: bool) -> str:
    return "ok" if ok else "FAIL"


def _config(run_dir: Path, method: str, device: str, batch: int, backbone: str = "small_cnn", **train):
    from device_sync import method_config

    return method_config(run_dir, method, device, batch, backbone, **{"log_every": 1, "checkpoint_every": 2, **train})


def _dataset(n: int, side: int = 32):
    from ssl_aug.data import ImageDataset

    return ImageDataset(images=random_images(n, side), labels=torch.arange(n) % 10, classes=[str(i) for i in range(10)],
                        name="device_check")


# ----------------------------------------------------------------------------------------------- checks
def check_view_parity(device: torch.device, sizes: Sizes) -> list[Row]:
    from ssl_aug.augment import MultiView, get_preset

    from ssl_aug.augment.spec import ViewSpec

    side, view = sizes.imagenet
    settings = [(n, *get_preset(n, **kw), s) for n, kw, s in
                [("simclr_cifar", {}, 32), ("swav_multicrop", {}, 32), ("simclr_imagenet", {"size": view}, side)]]
    rows = [] if available("kornia") else [["view parity", "randaugment (masked sub-policies)", "kornia is not "
                                             "installed here", "skip"]]
    if not rows:
        settings.append(("randaugment", [ViewSpec(size=32, auto_augment="randaugment")], [2], 32))
    for name, specs, counts, input_side in settings:
        images = random_images(sizes.parity_n, input_side, seed=1)
        for mode in ("exact", "fast"):
            views = MultiView(specs, counts, mode=mode)
            params = views.sample(images, torch.Generator().manual_seed(0))
            reference = views.apply(images, params)
            on_device = views.apply(images.to(device), params)
            gaps = torch.cat([(a - b.cpu()).abs().flatten() for a, b in zip(reference, on_device)])
            diff, off = float(gaps.max()), float((gaps > 1 / 255).double().mean())
            if name == "randaugment":  # kornia's discrete ops (posterize, solarize, equalize) may round a value
                # that sits on a bin edge the other way on another device: count values more than 1/255 apart
                rows.append(["view parity", f"{name} {mode}, CPU vs {device.type}",
                             f"max abs diff {diff:.1e}, {100 * off:.3f}% of values > 1/255 apart",
                             _status(off <= 1e-3)])
            else:
                rows.append(["view parity", f"{name} {mode}, CPU vs {device.type}", f"max abs diff {diff:.1e}",
                             _status(diff <= 1e-4)])
    return rows


def _trainer(cfg, data):
    from ssl_aug.train import Trainer

    return Trainer(cfg, progress=False, train_data=data)


def check_sync_audit(device: torch.device, sizes: Sizes, tmp: Path) -> list[Row]:
    """Every registered method (and streamed shards) for a few steps with no host<->device sync."""
    from device_sync import check_method_sync

    images = max(sizes.train_images, sizes.train_batch * (sizes.sync_steps + 2))  # warm-up + steps in one epoch
    return check_method_sync(device, sizes.train_batch, images, sizes.sync_steps, tmp, _dataset)


class _StopAfter:
    """Mixin behaviour: die (like a kill) after `limit` optimiser steps."""

    @staticmethod
    def wrap(trainer, limit: int):
        original = trainer.optimize

        def optimize(views):
            if trainer.step >= limit:
                raise KeyboardInterrupt
            return original(views)

        trainer.optimize = optimize
        return trainer


def check_trainer(device: torch.device, sizes: Sizes, tmp: Path) -> tuple[list[Row], tuple | None]:
    """amp modes with clipping and channels_last; a run killed after step 3 resumes to the same state.
    Also returns (run directory, trained backbone) of the amp none run for the export check."""
    rows, trained = [], None
    data = _dataset(sizes.train_images)
    for amp in ("none", "bf16", "fp16"):
        if amp == "fp16" and device.type != "cuda":
            rows.append(["trainer", "amp fp16", "needs CUDA", "skip"])
            continue
        train = {"amp": amp, "grad_clip": 1.0, "channels_last": True, "deterministic": device.type == "cuda"}
        full = _trainer(_config(tmp / f"full_{amp}", "simclr", device.type, sizes.train_batch, **train), data)
        full.fit()
        part = _StopAfter.wrap(_trainer(_config(tmp / f"part_{amp}", "simclr", device.type, sizes.train_batch,
                                                **train), data), 3)
        try:
            part.fit()
        except (KeyboardInterrupt, SystemExit):
            pass
        resumed = _trainer(_config(tmp / f"part_{amp}", "simclr", device.type, sizes.train_batch, **train), data)
        resumed.fit(resume=True)
        a, b = full.method.state_dict(), resumed.method.state_dict()
        diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a if a[k].is_floating_point())
        finite = all(torch.isfinite(v.float()).all() for v in b.values() if v.is_floating_point())
        rows.append(["trainer", f"amp {amp}, clip, channels_last, resume after a kill at step 3",
                     f"{resumed.step} steps, resume max abs diff {diff:.1e}", _status(finite and diff == 0.0)])
        if amp == "none":
            trained = (tmp / f"full_{amp}", full.method.backbone)
    return rows, trained


def _ddp_worker(rank: int, world: int, init_file: str, device: str, out: str, backend: str = "gloo") -> None:
    import torch.distributed as tdist

    from ssl_aug import distributed as dist
    from ssl_aug.methods import build_method
    from ssl_aug.models import build_backbone

    if backend == "nccl":  # one GPU per rank
        device = f"cuda:{rank}"
        torch.cuda.set_device(rank)
    tdist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        method = build_method("simclr", build_backbone("small_cnn", widths=[8, 16]), proj_hidden_dim=16,
                              proj_dim=8, gather=True)
        method = dist.convert_sync_batchnorm(method, torch.device(device)).to(device)
        ids = [torch.device(device).index or 0] if device.startswith("cuda") else None
        model = torch.nn.parallel.DistributedDataParallel(method, device_ids=ids)
        g = torch.Generator().manual_seed(5)
        views = [torch.randn(8, 3, 16, 16, generator=g) for _ in range(2)]
        local = [v[rank * 4:(rank + 1) * 4].to(device) for v in views]
        loss, _ = model(local)
        loss.backward()
        if rank == 0:
            torch.save({k: p.grad.detach().cpu() for k, p in method.named_parameters() if p.grad is not None}, out)
    finally:
        tdist.destroy_process_group()


def check_two_ranks(device: torch.device, tmp: Path) -> list[Row]:
    """Two gloo ranks on one device (4 images each) give the gradients of one rank on all 8; with two GPUs
    also two NCCL ranks, one per GPU."""
    rows = _two_ranks(device, tmp, "gloo")
    if device.type != "cuda":
        return rows + [["two ranks (nccl)", "2 GPUs x 4 images vs 1 x 8", "needs CUDA", "skip"]]
    if torch.cuda.device_count() < 2:
        return rows + [["two ranks (nccl)", "2 GPUs x 4 images vs 1 x 8",
                        f"needs 2 GPUs ({torch.cuda.device_count()} here)", "skip"]]
    return rows + _two_ranks(device, tmp, "nccl")


def _two_ranks(device: torch.device, tmp: Path, backend: str) -> list[Row]:
    import torch.multiprocessing as mp

    from ssl_aug.methods import build_method
    from ssl_aug.models import build_backbone

    out = tmp / f"ddp_grads_{backend}.pt"
    mp.spawn(_ddp_worker, args=(2, str(tmp / f"ddp_init_{backend}"), str(device), str(out), backend), nprocs=2,
             join=True)
    torch.manual_seed(0)
    single = build_method("simclr", build_backbone("small_cnn", widths=[8, 16]), proj_hidden_dim=16, proj_dim=8)
    single = single.to(device)
    g = torch.Generator().manual_seed(5)
    views = [torch.randn(8, 3, 16, 16, generator=g).to(device) for _ in range(2)]
    loss, _ = single(views)
    loss.backward()
    ranks = torch.load(out)
    diff = max(float((p.grad.cpu() - ranks[k]).abs().max()) for k, p in single.named_parameters() if k in ranks)
    where = "2 GPUs" if backend == "nccl" else device.type
    return [[f"two ranks ({backend})", f"2 x 4 images on {where} vs 1 x 8", f"max abs grad diff {diff:.1e}",
             _status(len(ranks) > 0 and diff <= 1e-4)]]


def check_knn(device: torch.device, sizes: Sizes) -> list[Row]:
    if not available("faiss"):
        return [["features -> faiss kNN", "feature extraction on the device + faiss kNN",
                 "faiss is not installed here (pip install faiss-cpu)", "skip"]]
    from ssl_aug.evaluation.features import extract_features
    from ssl_aug.evaluation.knn import knn_classify
    from ssl_aug.models import build_backbone

    torch.manual_seed(0)
    encoder = build_backbone("small_cnn").eval()
    n = sizes.knn_images
    images, labels = random_images(n, 32, seed=3), torch.arange(n) % 10
    mean, std = [0.5] * 3, [0.25] * 3
    cpu = extract_features(encoder, images, mean, std, device=torch.device("cpu"), progress=False)
    dev = extract_features(encoder.to(device), images, mean, std, device=device, progress=False)
    encoder.cpu()
    diff = float((cpu - dev.cpu()).abs().max())
    half = n // 2
    pred_cpu = knn_classify(cpu[:half], labels[:half], cpu[half:], k=20, num_classes=10).argmax(1)
    pred_dev = knn_classify(dev[:half].cpu(), labels[:half], dev[half:].cpu(), k=20, num_classes=10).argmax(1)
    agree = float((pred_cpu == pred_dev).float().mean())
    return [["features -> faiss kNN", f"{n} images on {device.type} vs CPU",
             f"max abs feature diff {diff:.1e}, top-1 agreement {agree:.4f}", _status(diff <= 1e-3 and agree >= 0.99)]]


def check_export(device: torch.device, trained: tuple | None, tmp: Path) -> list[Row]:
    from ssl_aug.export import export_encoder, load_encoder

    if trained is None:
        return [["export + reload", "needs the amp none trainer run", "not run", "FAIL"]]
    run_dir, backbone = trained
    encoder = load_encoder(export_encoder(run_dir, tmp / "export"), device=device)
    images = random_images(16, 32, seed=4).to(device)
    mean = torch.tensor(encoder.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(encoder.std, device=device).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = backbone.to(device).eval()((images.float() / 255.0 - mean) / std)
        got = encoder(images)
    diff = float((expected - got).abs().max())
    return [["export + reload", f"torchvision-format encoder loaded on {device.type}", f"max abs diff {diff:.1e}",
             _status(diff <= 1e-4)]]


def check_throughput(device: torch.device, sizes: Sizes, tmp: Path) -> list[Row]:
    from ssl_aug.train.metrics import StepTimer

    amp = "bf16" if device.type == "cuda" else "none"
    rows = []
    data = _dataset(sizes.bench_batch * 4)
    for method in ("simclr",):
        cfg = _config(tmp / f"bench_{method}", method, device.type, sizes.bench_batch, sizes.bench_backbone,
                      amp=amp, channels_last=True)
        trainer = _trainer(cfg, data)
        images = data.images[: sizes.bench_batch].to(device)
        for _ in range(sizes.bench_warmup):
            trainer.optimize(trainer.make_views(images))
        timer = StepTimer(device)
        for _ in range(sizes.bench_steps):
            t0 = timer.mark()
            views = trainer.make_views(images)
            t1 = timer.mark()
            trainer.optimize(views)
            timer.add(t0, t1, timer.mark())
        view_s, step_s = timer.totals()
        rate = sizes.bench_batch * sizes.bench_steps / step_s
        rows.append(["throughput", f"{method} {sizes.bench_backbone} batch {sizes.bench_batch} amp {amp}",
                     f"{rate:,.0f} img/s, views {100 * view_s / step_s:.1f}% of the step (targets on an H200-class "
                     f"GPU: >= 8,000 img/s, views <= 5%)", "ok"])
    return rows


def check_shard_stream(device: torch.device, sizes: Sizes, tmp: Path) -> list[Row]:
    """Streamed shards (decode + crops + SimCLR views on the device) beside NVIDIA DALI on one generated pack."""
    from bench_data_gpu import device_check_rows

    return device_check_rows(device, sizes.dry, tmp)


# ----------------------------------------------------------------------------------------------- main
def run_checks(device: torch.device, sizes: Sizes) -> list[Row]:
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="ssl_aug_device_check_") as folder:
        tmp = Path(folder)
        steps = [("view parity", lambda: check_view_parity(device, sizes)),
                 ("sync audit", lambda: check_sync_audit(device, sizes, tmp)),
                 ("trainer", lambda: check_trainer(device, sizes, tmp)),
                 ("two ranks (gloo)", lambda: check_two_ranks(device, tmp)),
                 ("features -> faiss kNN", lambda: check_knn(device, sizes)),
                 ("export + reload", lambda: check_export(device, trained, tmp)),
                 ("throughput", lambda: check_throughput(device, sizes, tmp)),
                 ("views on device", lambda: check_views_vs_baselines(device, sizes)),
                 ("shard stream", lambda: check_shard_stream(device, sizes, tmp))]
        trained = None
        for name, step in steps:
            start = time.perf_counter()
            try:
                result = step()
                if name == "trainer":
                    result, trained = result
            except Exception as exc:  # a failing check is a row, and the others still run
                result = [[name, "raised", f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:150]}", "FAIL"]]
            for row in result:
                rows.append(row + [f"{time.perf_counter() - start:.1f}"])
                print(" | ".join(str(c) for c in rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="device_check", description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-dry-run", action="store_true", help="tiny sizes on the CPU (CUDA-only checks skip)")
    parser.add_argument("--device", default="cuda", help="the device to check (default cuda)")
    parser.add_argument("--no-write", action="store_true", help="do not rewrite BENCHMARKS.md")
    args = parser.parse_args(argv)
    device = torch.device("cpu" if args.cpu_dry_run else args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("device_check: CUDA is not available here; use --cpu-dry-run for the CPU dry run", file=sys.stderr)
        return 2
    if device.type == "cuda":  # parity rows compare fp32 on both devices: TF32 (cuDNN's default) rounds to 10 bits
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    sizes = Sizes(dry=args.cpu_dry_run)
    start = time.perf_counter()
    rows = run_checks(device, sizes)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (dry run, tiny sizes)"
    table = markdown_table(["check", "what", "result", "status", "s"], rows)
    print(f"\n{name}, {time.perf_counter() - start:.0f} s\n\n{table}")
    if device.type == "cuda" and not args.no_write:
        update_benchmarks_md("device", f"Device check on {name}", table)
    failed = [r for r in rows if r[3] == "FAIL"]
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
