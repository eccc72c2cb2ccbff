"""The run's metrics log (metrics.jsonl, one JSON object per logged step and per epoch) and step timers."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from ssl_aug.io import append_line, atomic_write_text

__all__ = ["MetricsLog", "StepTimer", "LOGGERS"]
LOGGERS = ("none", "tensorboard")


class MetricsLog:
    """Appends JSON lines to `path` (only when `enabled`, i.e. on rank 0) and counts them, so a resume
    can cut the lines an interrupted run wrote after its checkpoint."""

    def __init__(self, path: str | Path, enabled: bool = True, logger: str = "none"):
        self.path, self.enabled, self.lines = Path(path), enabled, 0
        self.tensorboard = _tensorboard_writer(self.path.parent / "tensorboard") if (
            enabled and logger == "tensorboard") else None

    def reset(self) -> None:
        """Start a fresh log (a new run)."""
        if self.enabled:
            self.path.unlink(missing_ok=True)
        self.lines = 0

    def append(self, record: dict) -> None:
        if not self.enabled:
            return
        append_line(self.path, json.dumps(record), what="metrics log")
        self.lines += 1
        if self.tensorboard is not None:
            kind, step = record.get("type", "step"), record.get("step", self.lines)
            for key, value in record.items():
                if key not in ("type", "step") and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.tensorboard.add_scalar(f"{kind}/{key}", value, step)
            self.tensorboard.flush()

    def trim(self) -> None:
        """Keep exactly the first `lines` complete lines (an interrupted run may have logged further
        steps, an epoch record, or a torn last line); rewritten atomically."""
        if not self.enabled or not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:  # a run killed mid-write leaves a torn last line: drop it
                json.loads(line)
            except ValueError:
                continue
            kept.append(line)
        atomic_write_text(self.path, "".join(line + "\n" for line in kept[:self.lines]))


def _tensorboard_writer(folder: Path):
    """torch's SummaryWriter into the run's tensorboard/ folder (train.logger = "tensorboard")."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        from ssl_aug.errors import SslAugError

        raise SslAugError("train.logger = 'tensorboard' needs tensorboard: pip install 'ssl_aug[tensorboard]'") from None
    return SummaryWriter(log_dir=str(folder))


class StepTimer:
    """Time spent making views vs the whole step. On CUDA the marks are CUDA events (the GPU's own
    clock, resolved only when `shares()` is read, i.e. on logging steps); on CPU perf_counter."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.view_s = self.step_s = 0.0
        self._events: list[tuple] = []

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def add(self, start, views_done, step_done) -> None:
        if self.cuda:
            self._events.append((start, views_done, step_done))
        else:
            self.view_s += views_done - start
            self.step_s += step_done - start

    def totals(self) -> tuple[float, float]:
        """(seconds making views, seconds in whole steps) so far; on CUDA this waits for the last step."""
        if self._events:
            self._events[-1][2].synchronize()
            for start, views_done, step_done in self._events:
                self.view_s += start.elapsed_time(views_done) / 1000
                self.step_s += start.elapsed_time(step_done) / 1000
            self._events.clear()
        return self.view_s, self.step_s

    def view_share(self) -> float:
        view_s, step_s = self.totals()
        return view_s / max(step_s, 1e-9)
