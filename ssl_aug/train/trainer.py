"""The training loop: device-resident batches -> batched views -> method loss -> optimiser step.

Writes to the run directory: config.json and config.toml (the resolved recipe), metrics.jsonl (one JSON object per
logged step and per epoch), checkpoints/step_*.pt and checkpoints/last.pt (atomic). `fit(resume=True)`
continues exactly where the last checkpoint stopped (see ssl_aug.train.state). The loop talks to the
method only through the Method contract (forward, after_backward, after_optimizer_step, per_image_loss,
health_messages, rank_local_buffers). Host reads (loss value, non-finite check) happen on logging
steps only.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ssl_aug import distributed as dist
from ssl_aug.augment.crop_views import views_from_crops
from ssl_aug.augment.recipe import view_dtype, views_of
from ssl_aug.checkpoint import (latest_checkpoint, load_checkpoint, nonfinite_flag, save_run_checkpoint,
                                training_tensors)
from ssl_aug.config import Config
from ssl_aug.data import ImageDataset
from ssl_aug.errors import SslAugError
from ssl_aug.runlock import hold_run_folder
from ssl_aug.train.hard_views import hard_views
from ssl_aug.train.loop import EpochLoop
from ssl_aug.train.metrics import MetricsLog, StepTimer
from ssl_aug.train.run_folder import write_run_recipe
from ssl_aug.train.resume import agree_on_checkpoint, other_node_writers, save_on_every_node, writes_checkpoints
from ssl_aug.train.setup import (apply_schedules, autocast, buffer_sync, build_model, build_optimization,
                                 build_schedules, build_source, load_training_data, streams, sync_batchnorm_on,
                                 training_device, tune_allocator)
from ssl_aug.train.state import load_trainer_state, trainer_state

EpochCallback = Callable[["Trainer", int], dict]


class NonFiniteLossError(SslAugError):
    """The loss, a weight, a buffer or the optimiser state became NaN or inf; the run stopped and the
    last good checkpoint was kept."""


class Trainer(EpochLoop):
    """Self-supervised training of one recipe in one run directory, on the shared epoch loop (EpochLoop: its
    hooks are the "loop" section below)."""

    def __init__(self, cfg: Config, run_dir: str | Path | None = None, callbacks: list[EpochCallback] = (),
                 progress: bool = True, train_data: ImageDataset | None = None, hooks: list = ()):
        self.cfg = cfg
        self.run_dir = Path(run_dir or cfg.output_dir)
        self.callbacks = list(callbacks)
        # Step hooks (e.g. evaluation.OnlineLinearProbe): after_step(trainer, indices, views), end_epoch(trainer)
        # -> dict for the epoch record, hook_state() / load_hook_state(state) kept in checkpoints.
        self.hooks = list(hooks)
        self.rank, self.world_size = dist.rank(), dist.world_size()
        self.is_main = self.rank == 0
        self.device = training_device(cfg, self.world_size)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        if self.device.type == "cpu":
            tune_allocator()
        if cfg.train.batch_size % self.world_size:
            raise SslAugError(f"train.batch_size = {cfg.train.batch_size} must be divisible by the world size "
                              f"{self.world_size}")

        if train_data is None and not streams(cfg):
            train_data = load_training_data(cfg)
        self.data = train_data
        self.source = build_source(cfg, train_data, self.device, self.rank, self.world_size)
        if len(self.source) == 0:
            raise SslAugError(f"train.batch_size = {cfg.train.batch_size} is larger than the training set "
                              f"({self.source.num_samples} images): lower it")
        self.views = views_of(cfg).build(channels_last=cfg.train.channels_last,
                                         dtype=view_dtype(self.device, cfg.train.amp))
        self.view_generator = torch.Generator().manual_seed(cfg.seed * 1000 + self.rank)

        self.method = build_model(cfg).to(self.device)
        self.sync_batchnorm = sync_batchnorm_on(cfg, self.world_size, self.method)
        if self.sync_batchnorm:
            self.method = dist.convert_sync_batchnorm(self.method, self.device)
        if cfg.train.channels_last:
            self.method = self.method.to(memory_format=torch.channels_last)
        self.model = self.method
        if self.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # A SwAV queue holds this rank's own embeddings: DDP must not overwrite it with rank 0's buffers.
            self.model = nn.parallel.DistributedDataParallel(
                self.method, device_ids=ids, **buffer_sync(not self.method.rank_local_buffers))

        self.steps_per_epoch = len(self.source)
        self.optimizer, self.scheduler, self.scaler, self.total_steps = build_optimization(
            cfg, self.method, self.steps_per_epoch, self.device)
        self.schedules = build_schedules(cfg, self.method, self.optimizer)
        self.scheduled_values: dict[str, float] = {}  # the values of the last step (logged)
        super().__init__(MetricsLog(self.run_dir / "metrics.jsonl", enabled=self.is_main, logger=cfg.train.logger),
                         progress)  # step, epoch, history, saved_step, guard (ssl_aug.train.loop)
        self.epoch_loss = self._new_epoch_loss()  # running sum/count of this epoch's losses (checkpointed)
        self._warned: set[str] = set()
        self._last_loss: float | None = None
        self.nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)  # any non-finite loss so far
        self.extended = False  # set when a resume added epochs (the schedule gained a cosine tail)

    # ----------------------------------------------------------------- state
    def _new_epoch_loss(self) -> dict:
        return {"sum": torch.zeros((), dtype=torch.float64, device=self.device), "count": 0}

    def state_dict(self) -> dict:
        """The checkpoint dict (a collective with several ranks)."""
        state = trainer_state(self)
        if self.hooks:
            state["hooks"] = [hook.hook_state() for hook in self.hooks]
        return state

    def load_state_dict(self, ckpt: dict, path: Path) -> None:
        load_trainer_state(self, ckpt, path)
        for hook, hook_state in zip(self.hooks, ckpt.get("hooks", [])):
            hook.load_hook_state(hook_state, self.device)

    def save_checkpoint(self) -> Path | None:
        """Every rank calls this (the per-rank state is gathered); only rank 0 writes the file. A state
        with a NaN/inf weight, buffer or optimiser value is never written (NonFiniteLossError instead)."""
        return self.save()

    def write_state(self, state: dict) -> Path | None:
        if getattr(self, "_node_copies", False):  # nodes without rank 0's folder keep identical copies
            return save_on_every_node(state, self.run_dir, self.step, self.cfg.train.keep_checkpoints,
                                      self.writes_checkpoints)
        if not self.is_main:
            return None
        return save_run_checkpoint(state, self.run_dir, self.step, self.cfg.train.keep_checkpoints)

    def read_state(self, path: Path) -> dict:
        return load_checkpoint(path, map_location="cpu")

    # ----------------------------------------------------------------- loop (ssl_aug.train.loop)
    def resume_path(self, resume: bool | str | Path) -> Path | None:
        existing = latest_checkpoint(self.run_dir)
        if resume:
            path = existing if resume is True else Path(resume)
            # every rank must read the same bytes: compared by size and hash, sent to nodes that lack them
            return agree_on_checkpoint(path, self.run_dir) or (None if resume is True else path)
        if dist.any_rank(existing is not None):  # all ranks refuse together (no rank left waiting)
            raise SslAugError(f"run directory {self.run_dir} already has checkpoints: pass --resume to continue it, "
                              "or choose another output_dir")
        return None

    def start(self, resume: bool | str | Path) -> bool:
        """Prepare the run directory (resume or fresh); True when resumed."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.writes_checkpoints = writes_checkpoints(self.run_dir)
        self._node_copies = other_node_writers(self.writes_checkpoints)
        resumed = super().start(resume)
        if self.is_main and (not resumed or self.extended or not (self.run_dir / "config.json").exists()):
            write_run_recipe(self.run_dir, self.cfg.to_dict())  # config.json + config.toml; a resume keeps them
        self.nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)
        self.model.train()
        return resumed

    def fit(self, resume: bool | str | Path = False) -> dict:
        """Train to the end of the schedule. resume: False, True (latest checkpoint of the run
        directory, if any) or a checkpoint path. On SIGTERM/SIGINT: checkpoint, one line, then
        TrainingInterrupted (exit code 143/130). The run folder is locked meanwhile (ssl_aug.runlock)."""
        with hold_run_folder(self.run_dir, enabled=self.is_main):
            try:
                self.run(resume)
            finally:
                self.source.close()  # e.g. workers a streaming source started for an epoch that will not run
        return {"step": self.step, "epoch": self.epoch, "loss": self._last_loss}

    def should_continue(self) -> bool:
        return self.step < self.total_steps and self.epoch < self.cfg.train.epochs

    def begin_epoch(self, fresh: bool) -> None:
        if fresh:
            self.source.set_epoch(self.epoch)
            self.epoch_loss = self._new_epoch_loss()
        self._timer = None  # set when batches run (a resume after an epoch's last batch runs none)

    def epoch_done(self) -> bool:
        return self.source.position >= self.steps_per_epoch

    def bar_spec(self) -> tuple[int, int, str]:
        epochs = min(self.cfg.train.epochs, -(-self.total_steps // self.steps_per_epoch))  # what max_steps leaves
        position = self.source.position
        return (min(self.steps_per_epoch, position + self.total_steps - self.step), position,
                f"epoch {self.epoch + 1}/{epochs}")

    def begin_batches(self) -> None:
        self._timer = StepTimer(self.device)
        self._images_seen = 0
        self._epoch_start = self._window_start = time.perf_counter()

    def batches(self):
        return self.source

    def train_step(self, batch) -> tuple:
        """(indices (B,), uint8 images (B,3,H,W) or per-view crops) -> (indices, loss, stats, view timer marks)."""
        indices, images = batch
        t0 = self._timer.mark()
        views = self.make_views(images)
        t1 = self._timer.mark()
        loss, stats = self.optimize(views)
        for hook in self.hooks:
            hook.after_step(self, indices, views)
        return indices, loss, stats, t0, t1

    def after_step(self, out: tuple, bar) -> None:
        indices, loss, stats, t0, t1 = out
        cfg = self.cfg.train
        self.nonfinite = self.accumulate_loss(loss, self.nonfinite)
        self._timer.add(t0, t1, self._timer.mark())
        self._images_seen += indices.shape[0]
        last_of_epoch = self.source.position >= self.steps_per_epoch
        if self.step % cfg.log_every == 0 or last_of_epoch or self.step >= self.total_steps:
            self._check_finite(self.nonfinite)
            self._log_step(loss, stats, bar)
            self._images_seen, self._window_start = 0, time.perf_counter()

    def save_due(self) -> bool:
        every = self.cfg.train.checkpoint_every
        return bool(every) and self.step % every == 0

    def save_at_epoch_end(self) -> bool:
        return self.cfg.train.checkpoint_every == 0

    def check_finite(self) -> None:
        self._check_finite(self.nonfinite)

    def stop_at_once_at_start(self) -> bool:
        return self.world_size == 1  # lets a signal before the first finished step stop at once (one rank)

    def end_epoch(self) -> dict:
        loss = float(self.epoch_loss["sum"]) / max(self.epoch_loss["count"], 1)
        stats = {"loss": loss}
        if self._timer is not None:
            stats.update(epoch_time_s=time.perf_counter() - self._epoch_start,
                         view_time_share=self._timer.view_share())
        self.epoch += 1
        self.source.set_epoch(self.epoch)
        record = {"type": "epoch", "epoch": self.epoch, "step": self.step, **stats}
        if self.is_main and self.callbacks:  # rank 0 only; each callback decides whether this epoch is its turn
            for callback in self.callbacks:
                record.update(callback(self, self.epoch))
            self.model.train()
        for hook in self.hooks:
            record.update(hook.end_epoch(self))
        return record

    def stop_line(self, signum: int) -> str:
        return (f"stopped after step {self.step}/{self.total_steps}; checkpoint {self._last_path()}; "
                f"resume with the same command plus --resume (output_dir {self.run_dir})")

    def stop_report(self) -> tuple[int, Path | None]:
        return self.step, self._last_path() if self.is_main else None

    def _last_path(self) -> Path:
        return self.run_dir / "checkpoints" / "last.pt"

    def _check_finite(self, nonfinite: torch.Tensor) -> None:
        """Raise NonFiniteLossError if the loss was non-finite on any rank (all ranks agree first)."""
        flag = nonfinite.to(torch.int32)
        if self.world_size > 1:
            flag = dist.all_reduce_max(flag.clone())
        if bool(flag):
            raise NonFiniteLossError(
                f"loss became NaN/inf before step {self.step}: run stopped; last good checkpoint kept in "
                f"{self.run_dir / 'checkpoints'} (try a lower train.lr, train.amp=none or train.grad_clip=1.0)")

    def check_state_finite(self) -> None:
        """Raise NonFiniteLossError if any parameter, buffer or optimiser tensor is NaN/inf on any rank:
        one device reduction and one host read, at checkpoint boundaries only."""
        flag = nonfinite_flag(training_tensors(self.method, self.optimizer)).to(torch.int32)
        if self.world_size > 1:
            flag = dist.all_reduce_max(flag.to(self.device).clone())
        if bool(flag):
            kept = latest_checkpoint(self.run_dir)
            where = f"last good checkpoint kept: {kept}" if kept else "no checkpoint was written"
            raise NonFiniteLossError(
                f"weights or optimiser state became NaN/inf by step {self.step}: run stopped; {where} "
                f"(try a lower train.lr, train.amp=none or train.grad_clip=1.0)")

    def make_views(self, images) -> list[torch.Tensor]:
        """uint8 (B,3,H,W) on the device -> the recipe's views (list of (B,3,s,s) float tensors);
        with train.view_candidates = K > 1, per image the hardest of K candidate view sets. A list of
        per-view uint8 crops (a shard source) gets the views' post-crop ops."""
        k = self.cfg.train.view_candidates
        with torch.no_grad():
            if isinstance(images, list):
                return views_from_crops(self.views, images, generator=self.view_generator)
            if k == 1:
                return self.views(images, generator=self.view_generator)
            return hard_views(self.method, lambda: self.views(images, generator=self.view_generator), k,
                              autocast=autocast(self.device, self.cfg.train.amp))

    def optimize(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, dict]:
        """One optimiser step on a list of views: forward (AMP), backward, clip, step, schedule."""
        cfg = self.cfg.train
        if self.schedules:
            self.scheduled_values = apply_schedules(self.schedules, self.method, self.optimizer, self.step, self.steps_per_epoch,
                            self.total_steps)
        with autocast(self.device, cfg.amp):
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

    def accumulate_loss(self, loss: torch.Tensor, nonfinite: torch.Tensor) -> torch.Tensor:
        """Add a step's loss to the epoch sum and the non-finite flag, on the device (no host read)."""
        detached = loss.detach().float()
        self.epoch_loss["sum"] = self.epoch_loss["sum"] + detached.double()
        self.epoch_loss["count"] += 1
        return nonfinite | ~torch.isfinite(detached)

    def _log_step(self, loss, stats, bar) -> None:
        now = time.perf_counter()
        record = {"type": "step", "step": self.step, "epoch": self.epoch,
                  "lr": self.optimizer.param_groups[0]["lr"], **{k: float(v) for k, v in stats.items()},
                  "img_per_s": self._images_seen * self.world_size / max(now - self._window_start, 1e-9),
                  "view_time_share": self._timer.view_share(), **self.scheduled_values}
        record["loss"] = self._last_loss = float(loss.detach())
        self.metrics.append(record)
        for message in self.method.health_messages(stats) if self.is_main else ():
            if message[:40] not in self._warned:
                self._warned.add(message[:40])
                bar.write(f"warning (step {self.step}): {message}")
        bar.set_postfix(loss=f"{record['loss']:.3f}", img_s=f"{record['img_per_s']:.0f}")
