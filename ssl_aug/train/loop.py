"""The epoch loop shared by self-supervised training (`Trainer`) and fine-tuning (`evaluation.finetune`).

`EpochLoop` owns the control flow: resume (load the saved state, trim metrics.jsonl to its line count) or
a fresh start; epochs of batches with a step counter and a tqdm bar; the per-epoch record appended to the
metrics log; states saved atomically at the points the user chooses, never a non-finite one; and clean
stops on SIGTERM/SIGINT (`PreemptionGuard`): the step in progress finishes, the stop is checked after every
step, a state is kept, one line says where and how to continue, then `TrainingInterrupted` (exit 143/130).

A user subclasses it and fills in the hooks below (what a batch is, one optimisation step, the epoch
record, the state dict and where it is written). The loop calls them in this order::

    start(resume) -> resume_path, read_state, load_state_dict   (or a fresh metrics log)
    while should_continue():
        begin_epoch(fresh); begin_batches()
        for batch in batches(): train_step(batch); step += 1; after_step(out, bar)
                                stop_requested(); [check_finite(); save() if save_due() or stopping]
        end_epoch() -> record; metrics.append(record); [save() if save_at_epoch_end()]
    check_finite(); [save()]; [stop_line(signum) + TrainingInterrupted after a signal]
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
import signal
from pathlib import Path
from typing import Any, Iterable

from ssl_aug.train.metrics import MetricsLog
from ssl_aug.train.signals import PreemptionGuard, TrainingInterrupted, say_stop

__all__ = ["EpochLoop"]


class EpochLoop(ABC):
    """Epochs of batches with resume, atomic states and clean stops; subclasses fill in the hooks.

    Attributes kept by the loop: `step` (optimisation steps finished, over all epochs), `epoch` (epochs
    finished; `end_epoch` advances it), `history` (the epoch records), `saved_step` (the step of the last
    state written or loaded, None before any), `guard` (the PreemptionGuard while the loop runs),
    `stopping` (a signal was agreed on after the last step)."""

    saves_mid_epoch = True  # a state inside an epoch (save_due, at a signal, at the end); False: at epoch ends only
    continue_hint: str | None = None  # the stop lines' "how to continue" (None: PreemptionGuard's default)
    is_main = True  # the process that prints the stop line and shows the progress bar

    def __init__(self, metrics: MetricsLog, progress: bool = True):
        self.metrics, self.progress = metrics, progress
        self.step = self.epoch = 0
        self.history: list[dict] = []
        self.saved_step: int | None = None
        self.guard: PreemptionGuard | None = None
        self.stopping = False

    # ------------------------------------------------------------------ hooks
    @abstractmethod
    def should_continue(self) -> bool:
        """More to train: checked before every epoch and after every step (False inside an epoch: a step limit)."""

    def begin_epoch(self, fresh: bool) -> None:
        """Before epoch `self.epoch` (fresh=False: the first epoch after a resume, which may be under way)."""

    @abstractmethod
    def epoch_done(self) -> bool:
        """True when every batch of the current epoch has been trained."""

    @abstractmethod
    def bar_spec(self) -> tuple[int, int, str]:
        """(total, initial, description) of the epoch's progress bar, counted in batches."""

    def begin_batches(self) -> None:
        """Just before the epoch's (remaining) batches run."""

    @abstractmethod
    def batches(self) -> Iterable:
        """The current epoch's remaining batches (whatever `train_step` takes)."""

    @abstractmethod
    def train_step(self, batch) -> Any:
        """One optimisation step on `batch`; its output goes to `after_step` (e.g. the loss, a 0-dim tensor)."""

    def after_step(self, out, bar) -> None:
        """Bookkeeping after the step counter advanced (loss sums, logging, the bar's postfix)."""

    def save_due(self) -> bool:
        """A state after this step (only with saves_mid_epoch)."""
        return False

    @abstractmethod
    def end_epoch(self) -> dict:
        """Advance `self.epoch`; return the epoch record for metrics.jsonl ({"type": "epoch", "epoch", ...})."""

    def save_at_epoch_end(self) -> bool:
        return False

    def check_finite(self) -> None:
        """Raise when the losses so far were NaN/inf (before states saved inside an epoch and at the end)."""

    def check_state_finite(self) -> None:
        """Raise when a weight or optimiser value is NaN/inf (before every save: a non-finite state is never kept)."""

    @abstractmethod
    def state_dict(self) -> dict:
        """Everything a resume needs (weights, optimiser, loop position, metrics.lines)."""

    @abstractmethod
    def load_state_dict(self, state: dict, path: Path) -> None:
        """Restore what `state_dict` saved, including `step`, `epoch` and `metrics.lines`."""

    @abstractmethod
    def write_state(self, state: dict) -> Path | None:
        """Write `state` atomically; the file written (None where this process writes nothing)."""

    def resume_path(self, resume) -> Path | None:
        """The state to resume from (None: start afresh); may refuse in one line (SslAugError)."""
        return None

    @abstractmethod
    def read_state(self, path: Path) -> dict:
        """The state saved at `path` (weights-only loading); may refuse in one line (SslAugError)."""

    def stop_at_once_at_start(self) -> bool:
        """A signal before this process finished any step stops at once (PreemptionGuard.started_at)."""
        return False

    def stop_requested(self) -> bool:
        """After every step: was a signal received (by any rank)?"""
        return self.guard.stop_requested()

    @abstractmethod
    def stop_line(self, signum: int) -> str:
        """What the one stop line says after "ssl-aug: SIGTERM: " (what is kept, how to continue)."""

    def stop_report(self) -> tuple[int, Path | None]:
        """(step, checkpoint) for TrainingInterrupted."""
        return self.step, None

    # ------------------------------------------------------------------ the loop
    def start(self, resume) -> bool:
        """Resume (load the state of `resume_path`, trim metrics.jsonl to its line count) or start afresh (a
        new metrics log); True when resumed."""
        path = self.resume_path(resume)
        if path is None:
            self.metrics.reset()
            self.saved_step = None
            return False
        self.load_state_dict(self.read_state(path), path)
        self.metrics.trim()
        self.saved_step = self.step
        return True

    def save(self) -> Path | None:
        """Check the state is finite, then write it; a second signal waits for the write (guard.saving)."""
        self.check_state_finite()
        self.saved_step = self.step
        guard = self.guard
        if guard is not None:
            guard.saving = True
        try:
            return self.write_state(self.state_dict())
        finally:
            if guard is not None:
                guard.saving, guard.saved_step = False, self.step

    def run(self, resume=False, guard: PreemptionGuard | None = None) -> None:
        """start(resume), then train until `should_continue()` is False. `guard`: an entered PreemptionGuard
        that also covers the start; without one, a guard is set up once the start is done."""
        if guard is not None:
            return self._loop(not self.start(resume), guard)
        fresh = not self.start(resume)
        with PreemptionGuard() as guard:
            self._loop(fresh, guard)

    def _loop(self, fresh: bool, guard: PreemptionGuard) -> None:
        self.guard, self.stopping = guard, False
        guard.step = self.step
        guard.started_at = self.step if self.stop_at_once_at_start() else None
        guard.saved_step = self.saved_step
        if self.continue_hint:
            guard.continue_hint = self.continue_hint
        try:
            while self.should_continue():
                self.begin_epoch(fresh)
                fresh = True
                if not self.epoch_done():
                    self._run_batches()
                if not self.epoch_done():
                    break  # a step limit, or a signal, inside the epoch
                record = self.end_epoch()
                self.history.append(record)
                self.metrics.append(record)
                if self.save_at_epoch_end():
                    self.save()
                if self.stopping:
                    break
            self.check_finite()
            if self.saves_mid_epoch and self.saved_step != self.step:
                self.save()  # the final state, when the run ended between states
            if self.stopping or self.stop_requested():  # also a signal that came after the last step
                self._interrupted()
        finally:
            self.guard = None

    def _run_batches(self) -> None:
        from tqdm.auto import tqdm

        total, initial, desc = self.bar_spec()
        bar = tqdm(total=total, initial=initial, desc=desc, disable=not (self.progress and self.is_main),
                   dynamic_ncols=True, leave=False)
        with contextlib.closing(bar):
            self.begin_batches()
            for batch in self.batches():
                out = self.train_step(batch)
                self.step += 1
                self.guard.step = self.step
                bar.update(1)
                self.after_step(out, bar)
                self.stopping = self.stop_requested()
                if self.saves_mid_epoch and (self.save_due() or self.stopping):
                    self.check_finite()
                    self.save()
                if self.stopping or not self.should_continue():
                    break

    def _interrupted(self) -> None:
        """After a signal: the state is kept; one line says where and how to continue; TrainingInterrupted."""
        signum = self.guard.signum
        if self.is_main:
            say_stop(f"ssl-aug: {signal.Signals(signum).name}: {self.stop_line(signum)}")
        step, checkpoint = self.stop_report()
        raise TrainingInterrupted(signum, step, checkpoint)
