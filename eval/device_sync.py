"""Device-check rows for stalls: every registered method (and the streamed-shard source) for a few training
steps with no host<->device synchronisation. On CUDA the steps run under
``torch.cuda.set_sync_debug_mode("error")`` (any synchronising call raises); on the CPU dry run the same
trainer steps run on the meta device under :class:`ssl_aug.train.sync_audit.SyncAudit`.

Methods come from the registry with their default options, on two views of the recipe default, so a
newly registered method is checked without a line here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

Row = list  # [check, detail, result, status]


def method_config(run_dir: Path, method: str, device: str, batch: int, backbone: str = "small_cnn", data=None,
                  augment=None, **train):
    """A small recipe for `method` (its default options), 32 px views (plus `augment` keys), `train` overrides."""
    from ssl_aug.config import config_from_dict

    return config_from_dict({
        "seed": 1, "device": device, "output_dir": str(run_dir), "data": data or {},
        "model": {"backbone": backbone, "backbone_args": {}}, "method": {"name": method},
        "augment": {"size": 32, "scale": [0.2, 1.0], **(augment or {})},
        "train": {"epochs": 2, "batch_size": batch, "optimizer": "sgd", "lr": 0.05, "log_every": 1000,
                  "checkpoint_every": 0, "keep_checkpoints": 10, "warmup_epochs": 0, **train},
        "eval": {"final_knn": False},
    })


def _cuda_steps(cfg, data, steps: int) -> str:
    """`steps` trainer steps (source batch, views, optimiser step, loss bookkeeping) under sync error mode."""
    from ssl_aug.train import Trainer

    trainer = Trainer(cfg, progress=False, train_data=data)
    batches = iter(trainer.source)
    nonfinite = torch.zeros((), dtype=torch.bool, device=trainer.device)

    def step(nonfinite):
        _, images = next(batches)
        loss, _ = trainer.optimize(trainer.make_views(images))
        trainer.step += 1
        return trainer.accumulate_loss(loss, nonfinite)

    nonfinite = step(nonfinite)  # lazy initialisation (cuDNN plans, optimiser state) may sync once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(steps):
            nonfinite = step(nonfinite)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    finite = bool(~nonfinite)
    return f"{steps} steps, 0 syncs" + ("" if finite else ", loss not finite")


def _meta_steps(cfg, data, steps: int) -> str:
    from ssl_aug.train.sync_checks import audit_trainer_step

    audit = audit_trainer_step(cfg, data, steps)
    audit.check("training step")
    return f"{steps} steps on meta, 0 stalls, {audit.counts()['h2d_async']} non-blocking copies"


def _shards(folder: Path, n: int, side: int = 32) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    g = np.random.default_rng(0)
    for i in range(2):
        np.savez(folder / f"train_{i}.npz", x=g.integers(0, 256, (n // 2, side, side, 3), dtype=np.uint8),
                 y=np.zeros(n // 2, np.int64))
    return {"name": "npz", "root": str(folder), "split": "train", "stream": True}


def _jpeg_pack(folder: Path, n: int) -> dict:
    """A `--format shards` pack of n small JPEGs (40-90 px, 4 classes): the nvjpeg stream's data."""
    from PIL import Image

    from ssl_aug.data.shard_pack import pack_shards

    g = np.random.default_rng(1)
    for i in range(n):
        d = folder / "tree" / f"c{i % 4}"
        d.mkdir(parents=True, exist_ok=True)
        h, w = (int(v) for v in g.integers(40, 91, 2))
        Image.fromarray(g.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(d / f"{i:04d}.jpg", quality=85)
    pack_shards(folder / "tree", folder / "pack", shard_size=max(1, n // 8), workers=1, verbose=False)
    return {"name": "shards", "root": str(folder / "pack"), "options": {"workers": 1}}


def check_method_sync(device: torch.device, batch: int, images: int, steps: int, tmp: Path, dataset) -> list[Row]:
    """One row per registered method, plus the streamed-shard source, JPEG shards decoded on the device (CUDA
    only) and RandAugment views (SimCLR; the latter when kornia is installed)."""
    from ssl_aug.methods import METHODS

    cuda = device.type == "cuda"
    amp = "bf16" if cuda else "none"
    run = _cuda_steps if cuda else _meta_steps
    mode = 'set_sync_debug_mode("error")' if cuda else "SyncAudit on meta"
    data = dataset(images)
    cases = [(f"{m}, resident batches", method_config(tmp / f"sync_{m}", m, device.type, batch, amp=amp), data)
             for m in METHODS]
    stream = _shards(tmp / "shards", images)
    cases.append(("simclr, streamed npz shards",
                  method_config(tmp / "sync_stream", "simclr", device.type, batch, data=stream, amp=amp), None))
    if cuda:  # JPEG shards decoded by nvjpeg in the training process, crops cut there (no CPU meta twin)
        cases.append(("simclr, JPEG shards decoded on the device", method_config(
            tmp / "sync_nvjpeg", "simclr", device.type, 16, data=_jpeg_pack(tmp / "jpegs", 16 * (steps + 3)), amp=amp),
            None))
    import importlib.util

    if importlib.util.find_spec("kornia") is not None:  # policy sub-policies as masks, kornia ops on the device
        cases.append(("simclr, randaugment views", method_config(tmp / "sync_policy", "simclr", device.type, batch,
                                                                 augment={"auto_augment": "randaugment"}, amp=amp),
                      data))
    rows = []
    for what, cfg, train_data in cases:
        try:
            rows.append(["sync audit", f"{what}, amp {amp}, {mode}", run(cfg, train_data, steps), "ok"])
        except Exception as exc:  # a sync raises (CUDA) or is reported (meta): the row names it and where
            import traceback

            where = [f"{Path(f.filename).name}:{f.lineno}" for f in traceback.extract_tb(exc.__traceback__)
                     if "ssl_aug" in f.filename][-1:]
            rows.append(["sync audit", f"{what}, amp {amp}, {mode}",
                         f"{type(exc).__name__}: {(str(exc).splitlines() or ['(no message)'])[0][:160]}"
                         + (f" at {where[0]}" if where else ""), "FAIL"])
    return rows
