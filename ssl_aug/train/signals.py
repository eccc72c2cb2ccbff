"""Preemption: SIGTERM (torchrun, Slurm, Kubernetes) and SIGINT (Ctrl-C) end a run cleanly.

While `fit()` runs, the first signal only sets a flag. After the step in progress, every rank
agrees (`stop_requested`, a collective), the trainer writes a checkpoint, prints one line saying
where it is and how to resume, and raises `TrainingInterrupted` - a SystemExit with code 143
(SIGTERM) or 130 (SIGINT), so a command-line run exits with the conventional status.

Stopping at once (within seconds, also inside a long step), with one line saying what is lost: a
signal that arrives before this process finished any step (nothing would be saved that is not
already on disk), and a second signal (SIGTERM or SIGINT) while the first waits for its step. A
signal is never acted on at once while a checkpoint is being written (`guard.saving`).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading

from ssl_aug import distributed as dist

__all__ = ["EXIT_CODES", "PreemptionGuard", "TrainingInterrupted", "PhaseInterrupted", "interrupt_on_signal",
           "say_stop", "workflow_stop_line", "end_workflow"]

EXIT_CODES = {signal.SIGTERM: 143, signal.SIGINT: 130}
_LINE_OWNERS: list[str] = []  # workflows (ablation, search) that print the stop line themselves


@contextlib.contextmanager
def workflow_stop_line(workflow: str):
    """Inside an ablation or a search the workflow prints the one stop line (which cell or trial stopped,
    what is finished, how to continue); the trainer and the experiment inside it stay quiet."""
    _LINE_OWNERS.append(workflow)
    try:
        yield
    finally:
        _LINE_OWNERS.pop()


def say_stop(line: str) -> None:
    """Print a stop line on stderr, unless a workflow around this run prints its own."""
    if not _LINE_OWNERS:
        print(line, file=sys.stderr, flush=True)


def end_workflow(signum: int, what: str) -> None:
    """A workflow's own stop line ("ssl-aug: SIGTERM: <what>"), then exit with the signal's status (143 / 130)."""
    print(f"ssl-aug: {signal.Signals(signum).name}: {what}", file=sys.stderr, flush=True)
    raise TrainingInterrupted(signum, 0) from None


class TrainingInterrupted(SystemExit):
    """Training stopped on a signal after writing a checkpoint. `code`: 143 (SIGTERM) or 130 (SIGINT);
    `checkpoint`: the written file (None on ranks other than 0); `step`: the last finished step."""

    def __init__(self, signum: int, step: int, checkpoint=None):
        super().__init__(EXIT_CODES.get(signum, 128 + int(signum)))
        self.signum, self.step, self.checkpoint = signum, step, checkpoint


class PhaseInterrupted(BaseException):
    """Raised by `interrupt_on_signal` where SIGTERM/SIGINT arrived (outside the training loop, whose
    PreemptionGuard finishes the step first). A BaseException, so writers clean up their temp files."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def interrupt_on_signal():
    """For the phases around training (data, model, final evaluation, export): SIGTERM and SIGINT raise
    PhaseInterrupted at once, so the caller can say what is saved and how to continue."""
    previous = {}

    def handle(signum, frame):
        raise PhaseInterrupted(signum)

    if threading.current_thread() is threading.main_thread():
        previous = {signum: signal.signal(signum, handle) for signum in EXIT_CODES}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class PreemptionGuard:
    """Context manager that turns SIGTERM/SIGINT into a flag for the duration of a training loop
    (handlers are only installed from the main thread; elsewhere signals keep their defaults)."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}
        self.step, self.saved_step = 0, None  # set by the trainer: last finished step, last checkpoint's step
        self.started_at: int | None = None  # the step this process started from (None: not yet training)
        self.saving = False
        self.continue_hint = "resume with the same command plus --resume"  # fine-tuning: the same command

    def _stop_now(self, signum: int, why: str) -> None:
        kept = "no checkpoint yet" if self.saved_step is None else f"the checkpoint of step {self.saved_step} is kept"
        say_stop(f"ssl-aug: {signal.Signals(signum).name}: stopped at once ({why}); {kept}; {self.continue_hint}")
        raise TrainingInterrupted(signum, self.step)

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:  # a second signal: stop now
            if not self.saving:
                lost = self.step - (self.saved_step or 0)
                self._stop_now(signum, f"second signal; the {lost} step(s) since the last checkpoint are lost")
            return
        self.signum = signum
        if self.started_at is not None and self.step == self.started_at and not self.saving:
            self._stop_now(signum, "no step had finished since the start, nothing is lost")

    def __enter__(self) -> "PreemptionGuard":
        if threading.current_thread() is threading.main_thread():
            for signum in EXIT_CODES:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def stop_requested(self) -> bool:
        """True if any rank received a signal. A collective with several ranks: call it at the same
        point of every step on every rank (a 4-byte gloo all-reduce on CPU, no GPU sync)."""
        stop = dist.any_rank(self.signum is not None)
        if stop and self.signum is None:  # another rank was signalled
            self.signum = signal.SIGTERM
        return stop
