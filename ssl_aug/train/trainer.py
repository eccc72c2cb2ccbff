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
from ssl_aug.train.metrics import MetricsLog, StepTimer
from ssl_aug.train.run_folder import write_run_recipe
from ssl_aug.train.resume import agree_on_checkpoint, other_node_writers, save_on_every_node, writes_checkpoints
from ssl_aug.train.setup import (apply_schedules, autocast, buffer_sync, build_model, build_optimization,
                                 build_schedules, build_source, load_training_data, streams, sync_batchnorm_on,
                                 training_device, tune_allocator)
from ssl_aug.train.signals import PreemptionGuard, TrainingInterrupted, say_stop
from ssl_aug.train.state import load_trainer_state, trainer_state

EpochCallback = Callable[["Trainer", int], dict]


class NonFiniteLossError(SslAugError):
    """The loss, a weight, a buffer or the optimiser state became NaN or inf; the run stopped and the
    last good checkpoint was kept."""


class Trainer:
    """Self-supervised training of one recipe in one run directory."""

    def __init__(self, cfg: Config, run_dir: str | Path | None = None, callbacks: list[EpochCallback] = (),
                 progress: bool = True, train_data: ImageDataset | None = None, hooks: list = ()):
        self.cfg = cfg
        self.run_dir = Path(run_dir or cfg.output_dir)
        self.callbacks = list(callbacks)
        # Step hooks (e.g. evaluation.OnlineLinearProbe): after_step(trainer, indices, views), end_epoch(trainer)
        # -> dict for the epoch record, hook_state() / load_hook_state(state) kept in checkpoints.
        self.hooks = list(hooks)
        self.progress = progress
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
        self.step = 0
        self.epoch = 0
        self.history: list[dict] = []
        self.metrics = MetricsLog(self.run_dir / "metrics.jsonl", enabled=self.is_main, logger=cfg.train.logger)
        self.epoch_loss = self._new_epoch_loss()  # running sum/count of this epoch's losses (checkpointed)
        self._warned: set[str] = set()
        self._last_loss: float | None = None
        self._saved_step = -1
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
        self._check_state_finite()
        self._saved_step = self.step
        guard = getattr(self, "_guard", None)
        if guard is not None:
            guard.saving = True
        try:
            state = self.state_dict()
            if getattr(self, "_node_copies", False):  # nodes without rank 0's folder keep identical copies
                return save_on_every_node(state, self.run_dir, self.step, self.cfg.train.keep_checkpoints,
                                          self.writes_checkpoints)
            if not self.is_main:
                return None
            return save_run_checkpoint(state, self.run_dir, self.step, self.cfg.train.keep_checkpoints)
        finally:
            if guard is not None:
                guard.saving, guard.saved_step = False, self.step

    # ----------------------------------------------------------------- loop
    def _start(self, resume: bool | str | Path) -> bool:
        """Prepare the run directory (resume or fresh); True when a new epoch starts."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        existing = latest_checkpoint(self.run_dir)
        self.writes_checkpoints = writes_checkpoints(self.run_dir)
        self._node_copies = other_node_writers(self.writes_checkpoints)
        fresh_epoch = True
        if resume:
            path = existing if resume is True else Path(resume)
            # every rank must read the same bytes: compared by size and hash, sent to nodes that lack them
            path = agree_on_checkpoint(path, self.run_dir) or (None if resume is True else path)
            if path is not None:
                self.load_state_dict(load_checkpoint(path, map_location="cpu"), path)
                fresh_epoch = False
                self.metrics.trim()
        elif dist.any_rank(existing is not None):  # all ranks refuse together (no rank left waiting)
            raise SslAugError(f"run directory {self.run_dir} already has checkpoints: pass --resume to continue it, "
                              "or choose another output_dir")
        else:
            self.metrics.reset()
        if self.is_main and (fresh_epoch or self.extended or not (self.run_dir / "config.json").exists()):
            write_run_recipe(self.run_dir, self.cfg.to_dict())  # config.json + config.toml; a resume keeps them
        self._saved_step = self.step if not fresh_epoch else -1
        return fresh_epoch

    def fit(self, resume: bool | str | Path = False) -> dict:
        """Train to the end of the schedule. resume: False, True (latest checkpoint of the run
        directory, if any) or a checkpoint path. On SIGTERM/SIGINT: checkpoint, one line, then
        TrainingInterrupted (exit code 143/130). The run folder is locked meanwhile (ssl_aug.runlock)."""
        with hold_run_folder(self.run_dir, enabled=self.is_main):
            return self._fit(resume)

    def _fit(self, resume: bool | str | Path) -> dict:
        fresh_epoch = self._start(resume)
        cfg = self.cfg.train
        nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)
        self.model.train()
        self._stopping = False  # set on every rank at once, when the ranks agree a signal came
        with PreemptionGuard() as self._guard:
            self._guard.step = self.step  # lets a signal before the first finished step stop at once (one rank)
            self._guard.started_at = self.step if self.world_size == 1 else None
            self._guard.saved_step = self._saved_step if self._saved_step >= 0 else None
            while self.step < self.total_steps and self.epoch < cfg.epochs:
                if fresh_epoch:
                    self.source.set_epoch(self.epoch)
                    self.epoch_loss = self._new_epoch_loss()
                fresh_epoch = True
                if self.source.position < self.steps_per_epoch:
                    nonfinite = self._run_epoch(nonfinite)
                else:  # resumed from a checkpoint taken after the last batch of this epoch
                    self._epoch_stats = {"loss": float(self.epoch_loss["sum"]) / max(self.epoch_loss["count"], 1)}
                if self.source.position < self.steps_per_epoch:
                    break  # train.max_steps reached, or a signal, inside the epoch
                self._end_epoch()
                if self._stopping:
                    break
            self._check_finite(nonfinite)
            if self._saved_step != self.step:
                self.save_checkpoint()  # the final state, when the run ended between checkpoints
            if self._stopping or self._guard.stop_requested():  # also a signal that came after the last step
                self._interrupted()
        return {"step": self.step, "epoch": self.epoch, "loss": self._last_loss}

    def _end_epoch(self) -> None:
        self.epoch += 1
        self.source.set_epoch(self.epoch)
        record = {"type": "epoch", "epoch": self.epoch, "step": self.step, **self._epoch_stats}
        if self.is_main and self.callbacks:  # rank 0 only; each callback decides whether this epoch is its turn
            for callback in self.callbacks:
                record.update(callback(self, self.epoch))
            self.model.train()
        for hook in self.hooks:
            record.update(hook.end_epoch(self))
        self.history.append(record)
        self.metrics.append(record)
        if self.cfg.train.checkpoint_every == 0:
            self.save_checkpoint()

    def _interrupted(self) -> None:
        """After a signal: the checkpoint of this step is written; say where and how to resume."""
        import signal

        path = self.run_dir / "checkpoints" / "last.pt"
        if self.is_main:
            name = signal.Signals(self._guard.signum).name
            say_stop(f"ssl-aug: {name}: stopped after step {self.step}/{self.total_steps}; checkpoint {path}; "
                     f"resume with the same command plus --resume (output_dir {self.run_dir})")
        raise TrainingInterrupted(self._guard.signum, self.step, path if self.is_main else None)

    def _check_finite(self, nonfinite: torch.Tensor) -> None:
        """Raise NonFiniteLossError if the loss was non-finite on any rank (all ranks agree first)."""
        flag = nonfinite.to(torch.int32)
        if self.world_size > 1:
            flag = dist.all_reduce_max(flag.clone())
        if bool(flag):
            raise NonFiniteLossError(
                f"loss became NaN/inf before step {self.step}: run stopped; last good checkpoint kept in "
                f"{self.run_dir / 'checkpoints'} (try a lower train.lr, train.amp=none or train.grad_clip=1.0)")

    def _check_state_finite(self) -> None:
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

    def _log_step(self, loss, stats, images_seen, window_start, timer, bar) -> None:
        now = time.perf_counter()
        record = {"type": "step", "step": self.step, "epoch": self.epoch,
                  "lr": self.optimizer.param_groups[0]["lr"], **{k: float(v) for k, v in stats.items()},
                  "img_per_s": images_seen * self.world_size / max(now - window_start, 1e-9),
                  "view_time_share": timer.view_share(), **self.scheduled_values}
        record["loss"] = self._last_loss = float(loss.detach())
        self.metrics.append(record)
        for message in self.method.health_messages(stats) if self.is_main else ():
            if message[:40] not in self._warned:
                self._warned.add(message[:40])
                bar.write(f"warning (step {self.step}): {message}")
        bar.set_postfix(loss=f"{record['loss']:.3f}", img_s=f"{record['img_per_s']:.0f}")

    def _run_epoch(self, nonfinite: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg.train
        from tqdm.auto import tqdm

        epochs = min(cfg.epochs, -(-self.total_steps // self.steps_per_epoch))  # what train.max_steps leaves
        position = self.source.position
        bar = tqdm(total=min(self.steps_per_epoch, position + self.total_steps - self.step), initial=position,
                   desc=f"epoch {self.epoch + 1}/{epochs}", disable=not (self.progress and self.is_main),
                   dynamic_ncols=True, leave=False)
        timer = StepTimer(self.device)
        images_seen = 0
        epoch_start = window_start = time.perf_counter()
        for indices, images in self.source:
            t0 = timer.mark()
            views = self.make_views(images)
            t1 = timer.mark()
            loss, stats = self.optimize(views)
            for hook in self.hooks:
                hook.after_step(self, indices, views)
            self.step += 1
            nonfinite = self.accumulate_loss(loss, nonfinite)
            self._guard.step = self.step
            timer.add(t0, t1, timer.mark())
            images_seen += indices.shape[0]
            bar.update(1)
            last_of_epoch = self.source.position >= self.steps_per_epoch
            if self.step % cfg.log_every == 0 or last_of_epoch or self.step >= self.total_steps:
                self._check_finite(nonfinite)
                self._log_step(loss, stats, images_seen, window_start, timer, bar)
                images_seen, window_start = 0, time.perf_counter()
            self._stopping = self._guard.stop_requested()
            if (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0) or self._stopping:
                self._check_finite(nonfinite)
                self.save_checkpoint()
            if self.step >= self.total_steps or self._stopping:
                break
        bar.close()
        self._epoch_stats = {"loss": float(self.epoch_loss["sum"]) / max(self.epoch_loss["count"], 1),
                             "epoch_time_s": time.perf_counter() - epoch_start,
                             "view_time_share": timer.view_share()}
        return nonfinite
