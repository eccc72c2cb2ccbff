"""The trainer: device-resident batches -> batched views -> method loss -> optimiser step.

Writes to the run directory: config.json (the resolved recipe), metrics.jsonl (one JSON object per
logged step and per epoch), checkpoints/step_*.pt and checkpoints/last.pt (atomic). `fit(resume=True)`
continues exactly where the last checkpoint stopped: model, optimiser, schedule, AMP scaler, every
random generator (views included) and the position inside the epoch.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ssl_aug import distributed as dist
from ssl_aug.augment.recipe import build_views, normalization
from ssl_aug.checkpoint import FORMAT, VERSION, latest_checkpoint, load_checkpoint, save_run_checkpoint
from ssl_aug.config import Config
from ssl_aug.data import BatchSource, ImageDataset, load_dataset
from ssl_aug.data.subset import balanced_subset
from ssl_aug.device import resolve_device
from ssl_aug.errors import SslAugError
from ssl_aug.methods import build_method
from ssl_aug.models import build_backbone
from ssl_aug.optim import build_optimizer, warmup_cosine
from ssl_aug.view_selection import hard_views

EpochCallback = Callable[["Trainer", int], dict]


class NonFiniteLossError(SslAugError):
    """The loss became NaN or inf; the run stopped and the last good checkpoint was kept."""


def load_training_data(cfg: Config, split: str = "train") -> ImageDataset:
    ds = load_dataset(cfg.data.name, split=split, root=cfg.data.root, download=cfg.data.download, **cfg.data.options)
    if split == "train" and cfg.data.subset and cfg.data.subset < len(ds.labels):
        idx = balanced_subset(ds.labels, cfg.data.subset, seed=0)  # the same images for every run seed
        ds = ImageDataset(images=ds.images[idx], labels=ds.labels[idx], classes=ds.classes, name=ds.name)
    return ds


def build_model(cfg: Config) -> nn.Module:
    """Backbone + method head(s) from the recipe (seeded, so every rank starts identical)."""
    torch.manual_seed(cfg.seed)
    backbone = build_backbone(cfg.model.backbone, **cfg.model.backbone_args)
    method_args = {k: v for k, v in cfg.method.items() if k != "name"}
    return build_method(cfg.method["name"], backbone, **method_args)


def _autocast(device: torch.device, amp: str):
    if amp == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    if device.type == "cpu" and amp == "fp16":
        raise SslAugError("train.amp = 'fp16' needs CUDA; on CPU use 'bf16' or 'none'")
    return torch.autocast(device_type=device.type, dtype=dtype)


class Trainer:
    """Self-supervised training of one recipe in one run directory."""

    def __init__(self, cfg: Config, run_dir: str | Path | None = None, callbacks: list[EpochCallback] = (),
                 progress: bool = True, train_data: ImageDataset | None = None):
        self.cfg = cfg
        self.run_dir = Path(run_dir or cfg.output_dir)
        self.callbacks = list(callbacks)
        self.progress = progress
        self.rank, self.world_size = dist.rank(), dist.world_size()
        self.is_main = self.rank == 0
        self.device = resolve_device(cfg.device)
        if self.device.type == "cuda" and self.world_size > 1:
            self.device = torch.device("cuda", dist.local_rank())
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        if cfg.train.batch_size % self.world_size:
            raise SslAugError(f"train.batch_size = {cfg.train.batch_size} must be divisible by the world size "
                              f"{self.world_size}")

        self.data = train_data if train_data is not None else load_training_data(cfg)
        self.source = BatchSource(self.data.images, batch_size=cfg.train.batch_size // self.world_size,
                                  seed=cfg.seed, rank=self.rank, world_size=self.world_size, drop_last=True,
                                  device=self.device)
        if len(self.source) == 0:
            raise SslAugError(f"train.batch_size = {cfg.train.batch_size} is larger than the training set "
                              f"({len(self.data.labels)} images): lower it")
        self.views = build_views(cfg.augment, channels_last=cfg.train.channels_last)
        self.view_generator = torch.Generator().manual_seed(cfg.seed * 1000 + self.rank)

        self.method = build_model(cfg).to(self.device)
        if cfg.model.sync_batchnorm and self.world_size > 1:
            self.method = dist.convert_sync_batchnorm(self.method, self.device)
        if cfg.train.channels_last:
            self.method = self.method.to(memory_format=torch.channels_last)
        self.model = self.method
        # A SwAV queue holds this rank's own embeddings: DDP must not overwrite it with rank 0's buffers.
        self.rank_local_buffers = self.method.rank_local_buffers
        if self.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.method, device_ids=ids,
                                                             broadcast_buffers=not self.rank_local_buffers)

        lr = cfg.train.lr * (cfg.train.batch_size / 256 if cfg.train.lr_scaling == "linear" else 1.0)
        self.base_lr = lr
        self.optimizer = build_optimizer(self.method, cfg.train.optimizer, lr, cfg.train.momentum,
                                         cfg.train.weight_decay)
        self.steps_per_epoch = len(self.source)
        self.total_steps = cfg.train.epochs * self.steps_per_epoch
        if cfg.train.max_steps:
            self.total_steps = min(self.total_steps, cfg.train.max_steps)
        warmup = int(round(cfg.train.warmup_epochs * self.steps_per_epoch))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: warmup_cosine(s, self.total_steps, warmup, cfg.train.min_lr_ratio))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.train.amp == "fp16")
        self.step = 0
        self.epoch = 0
        self.history: list[dict] = []
        self._warned: set[str] = set()
        self._last_loss: float | None = None
        self._epoch_loss = self._new_epoch_loss()  # running sum/count of this epoch's losses (checkpointed)
        self._metric_lines = 0  # lines in metrics.jsonl, so a resume can cut what came after the checkpoint

    # ----------------------------------------------------------------- state
    def _new_epoch_loss(self) -> dict:
        return {"sum": torch.zeros((), dtype=torch.float64, device=self.device), "count": 0}

    def state_dict(self) -> dict:
        from ssl_aug._version import __version__

        rng = {"torch": torch.get_rng_state(), "views": self.view_generator.get_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        state = {"format": FORMAT, "version": VERSION, "config": self.cfg.to_dict(),
                 "model": self.method.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                 "rng": rng, "batch_source": self.source.state_dict(), "step": self.step, "epoch": self.epoch,
                 "world_size": self.world_size, "metrics": self.history, "epoch_loss": dict(self._epoch_loss),
                 "metric_lines": self._metric_lines,
                 "versions": {"ssl_aug": __version__, "torch": str(torch.__version__)}}
        if self.world_size > 1:  # collective: every rank calls state_dict() through save_checkpoint()
            state["ranks"] = dist.all_gather_object(self._rank_state())
        return state

    def _rank_state(self) -> dict:
        """What differs between ranks: random generators, the data shard position, rank-local buffers."""
        local = {"rng": {"torch": torch.get_rng_state(), "views": self.view_generator.get_state()},
                 "batch_source": self.source.state_dict()}
        if self.rank_local_buffers:
            local["buffers"] = {k: v.detach().cpu() for k, v in self.method.named_buffers()}
        return local

    def load_state_dict(self, ckpt: dict, path: Path) -> None:
        if ckpt["config"]["model"]["backbone"] != self.cfg.model.backbone:
            raise SslAugError(f"checkpoint {path} was trained with backbone {ckpt['config']['model']['backbone']!r}, "
                              f"the recipe asks for {self.cfg.model.backbone!r}")
        if ckpt.get("world_size", 1) != self.world_size:
            raise SslAugError(f"checkpoint {path} was written with world size {ckpt.get('world_size', 1)}; resume "
                              f"with the same number of processes (now {self.world_size})")
        local = ckpt["ranks"][self.rank] if "ranks" in ckpt else {}
        model_state = dict(ckpt["model"], **local.get("buffers", {}))
        try:
            self.method.load_state_dict(model_state)
        except RuntimeError as exc:
            raise SslAugError(f"checkpoint {path} does not fit this model: {str(exc).splitlines()[0]}") from None
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        rng = local.get("rng", ckpt["rng"])
        torch.set_rng_state(rng["torch"])
        self.view_generator.set_state(rng["views"])
        if "cuda" in ckpt["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
        self.source.load_state_dict(local.get("batch_source", ckpt["batch_source"]))
        self.step, self.epoch = ckpt["step"], ckpt["epoch"]
        self.history = list(ckpt.get("metrics", []))
        self._epoch_loss = dict(ckpt.get("epoch_loss", self._epoch_loss))
        self._metric_lines = ckpt.get("metric_lines", 0)

    def save_checkpoint(self) -> Path | None:
        """Every rank calls this (the per-rank state is gathered); only rank 0 writes the file."""
        self._saved_step = self.step
        state = self.state_dict()
        if not self.is_main:
            return None
        return save_run_checkpoint(state, self.run_dir, self.step, self.cfg.train.keep_checkpoints)

    # ----------------------------------------------------------------- logging
    def _log(self, record: dict) -> None:
        if not self.is_main:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        self._metric_lines += 1

    def _trim_metrics(self) -> None:
        """After a resume, keep exactly the metric lines written before the checkpoint (the
        interrupted run may have logged further steps, an epoch record, or a torn last line)."""
        path = self.run_dir / "metrics.jsonl"
        if not self.is_main or not path.exists():
            return
        kept = []
        for line in path.read_text().splitlines():
            try:  # a run killed mid-write leaves a torn last line: drop it
                json.loads(line)
            except ValueError:
                continue
            kept.append(line)
        kept = kept[:self._metric_lines]
        tmp = path.with_name(f".{path.name}.tmp")  # atomic: a kill during the rewrite loses no lines
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, path)

    # ----------------------------------------------------------------- loop
    def fit(self, resume: bool | str | Path = False) -> dict:
        """Train to the end of the schedule. resume: False, True (latest checkpoint of the run
        directory, if any) or a checkpoint path."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fresh_epoch = True
        existing = latest_checkpoint(self.run_dir)
        if resume:
            path = existing if resume is True else Path(resume)
            if path is not None:
                self.load_state_dict(load_checkpoint(path, map_location=self.device), path)
                fresh_epoch = False
                self._trim_metrics()
        elif existing is not None:
            raise SslAugError(f"run directory {self.run_dir} already has checkpoints: pass --resume to continue it, "
                              "or choose another output_dir")
        elif self.is_main:
            (self.run_dir / "metrics.jsonl").unlink(missing_ok=True)
        if self.is_main:
            (self.run_dir / "config.json").write_text(json.dumps(self.cfg.to_dict(), indent=2) + "\n")

        cfg = self.cfg.train
        nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)
        self._saved_step = self.step if not fresh_epoch else -1
        self.model.train()
        while self.step < self.total_steps and self.epoch < cfg.epochs:
            if fresh_epoch:
                self.source.set_epoch(self.epoch)
                self._epoch_loss = self._new_epoch_loss()
            fresh_epoch = True
            if self.source.state_dict().get("position", 0) < self.steps_per_epoch:
                nonfinite = self._run_epoch(nonfinite)
            else:  # resumed from a checkpoint taken after the last batch of this epoch
                self._epoch_stats = {"loss": float(self._epoch_loss["sum"]) / max(self._epoch_loss["count"], 1)}
            if self.source.state_dict().get("position", 0) < self.steps_per_epoch:
                break  # train.max_steps reached inside the epoch
            self.epoch += 1
            self.source.set_epoch(self.epoch)
            record = {"type": "epoch", "epoch": self.epoch, "step": self.step, **self._epoch_stats}
            knn_every = self.cfg.eval.knn_every
            if self.callbacks and knn_every and self.epoch % knn_every == 0:
                for callback in self.callbacks:
                    record.update(callback(self, self.epoch))
                self.model.train()
            self.history.append(record)
            self._log(record)
            if cfg.checkpoint_every == 0:
                self.save_checkpoint()
        self._check_finite(nonfinite)
        if self._saved_step != self.step:
            self.save_checkpoint()  # the final state, when the run ended between checkpoints
        return {"step": self.step, "epoch": self.epoch, "loss": self._last_loss}

    def _check_finite(self, nonfinite: torch.Tensor) -> None:
        if bool(nonfinite):
            raise NonFiniteLossError(
                f"loss became NaN/inf before step {self.step}: run stopped; last good checkpoint kept in "
                f"{self.run_dir / 'checkpoints'} (try a lower train.lr, train.amp=none or train.grad_clip=1.0)")

    def make_views(self, images: torch.Tensor) -> list[torch.Tensor]:
        """uint8 (B,3,H,W) on the device -> the recipe's views (list of (B,3,s,s) float tensors);
        with train.view_candidates = K > 1, per image the hardest of K candidate view sets."""
        k = self.cfg.train.view_candidates
        with torch.no_grad():
            if k == 1:
                return self.views(images, generator=self.view_generator)
            return hard_views(self.method, lambda: self.views(images, generator=self.view_generator), k,
                              autocast=_autocast(self.device, self.cfg.train.amp))

    def optimize(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, dict]:
        """One optimiser step on a list of views: forward (AMP), backward, clip, step, schedule."""
        cfg = self.cfg.train
        with _autocast(self.device, cfg.amp):
            loss, stats = self.model(views, step=self.step, epoch=self.epoch)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.method.after_backward(self.step)
        if cfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.method.parameters(), cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.method.after_optimizer_step(self.step + 1, self.total_steps)
        return loss, stats

    def _run_epoch(self, nonfinite: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg.train
        from tqdm.auto import tqdm

        bar = tqdm(total=self.steps_per_epoch, initial=self.source.state_dict().get("position", 0),
                   desc=f"epoch {self.epoch + 1}/{cfg.epochs}", disable=not (self.progress and self.is_main),
                   dynamic_ncols=True, leave=False)
        view_time = step_time = 0.0
        images_seen = 0
        epoch_start = window_start = time.perf_counter()
        for _, images in self.source:
            t0 = time.perf_counter()
            views = self.make_views(images)
            t1 = time.perf_counter()
            loss, stats = self.optimize(views)
            detached = loss.detach().float()
            nonfinite = nonfinite | ~torch.isfinite(detached)
            self._epoch_loss["sum"] = self._epoch_loss["sum"] + detached.double()
            self._epoch_loss["count"] += 1
            self.step += 1
            t2 = time.perf_counter()
            view_time += t1 - t0
            step_time += t2 - t0
            images_seen += images.shape[0]
            bar.update(1)
            last_of_epoch = self.source.state_dict().get("position", 0) >= self.steps_per_epoch
            if self.step % cfg.log_every == 0 or last_of_epoch or self.step >= self.total_steps:
                self._check_finite(nonfinite)
                now = time.perf_counter()
                record = {"type": "step", "step": self.step, "epoch": self.epoch,
                          "lr": self.optimizer.param_groups[0]["lr"],
                          **{k: float(v) for k, v in stats.items()},
                          "img_per_s": images_seen * self.world_size / max(now - window_start, 1e-9),
                          "view_time_share": view_time / max(step_time, 1e-9)}
                record["loss"] = self._last_loss = float(loss.detach())
                self._log(record)
                for message in self.method.health_messages(stats) if self.is_main else ():
                    if message[:40] not in self._warned:
                        self._warned.add(message[:40])
                        bar.write(f"warning (step {self.step}): {message}")
                images_seen, window_start = 0, now
                bar.set_postfix(loss=f"{record['loss']:.3f}", img_s=f"{record['img_per_s']:.0f}")
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                self._check_finite(nonfinite)
                self.save_checkpoint()
            if self.step >= self.total_steps:
                break
        bar.close()
        self._epoch_stats = {"loss": float(self._epoch_loss["sum"]) / max(self._epoch_loss["count"], 1),
                             "epoch_time_s": time.perf_counter() - epoch_start,
                             "view_time_share": view_time / max(step_time, 1e-9)}
        return nonfinite
