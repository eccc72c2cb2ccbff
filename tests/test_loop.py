"""The shared epoch loop (ssl_aug.train.loop.EpochLoop) on a toy subclass: it trains, keeps states mid-epoch and
at epoch ends, stops on a real SIGTERM with one line and exit code 143, resumes exactly, never keeps a NaN state."""

import json
import os
import signal

import pytest
import torch

from ssl_aug.checkpoint import atomic_save, load_weights_only
from ssl_aug.errors import SslAugError
from ssl_aug.train.loop import EpochLoop
from ssl_aug.train.metrics import MetricsLog
from ssl_aug.train.signals import TrainingInterrupted


class ToyLoop(EpochLoop):
    """Least squares y = x @ w on 24 fixed rows (x (24,3), w (3,)), SGD with momentum, 4 batches of 6 rows per
    epoch (shuffled per epoch), a state every 3 steps and at every epoch end."""

    def __init__(self, run, epochs=3, signal_at=None, poison_at=None):
        super().__init__(MetricsLog(run / "metrics.jsonl"), progress=False)
        self.folder, self.epochs, self.signal_at, self.poison_at = run, epochs, signal_at, poison_at
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(24, 3, generator=g)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5]) + 0.1 * torch.randn(24, generator=g)
        self.w = torch.zeros(3, requires_grad=True)
        self.opt = torch.optim.SGD([self.w], lr=0.05, momentum=0.9)
        self.pos, self.loss_sum = 0, 0.0

    def should_continue(self):
        return self.epoch < self.epochs

    def begin_epoch(self, fresh):
        if fresh:
            self.pos, self.loss_sum = 0, 0.0

    def epoch_done(self):
        return self.pos >= 4

    def bar_spec(self):
        return 4, self.pos, f"toy {self.epoch + 1}"

    def batches(self):
        order = torch.randperm(24, generator=torch.Generator().manual_seed(self.epoch))
        while self.pos < 4:
            self.pos += 1
            yield order[6 * (self.pos - 1):6 * self.pos]

    def train_step(self, rows):
        if self.step == self.signal_at:
            os.kill(os.getpid(), signal.SIGTERM)  # handled by the loop's guard: the step finishes first
        loss = ((self.x[rows] @ self.w - self.y[rows]) ** 2).mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        if self.step == self.poison_at:
            with torch.no_grad():
                self.w[0] = float("nan")
        return loss

    def after_step(self, loss, bar):
        self.loss_sum += float(loss.detach())

    def save_due(self):
        return self.step % 3 == 0

    def end_epoch(self):
        self.epoch += 1
        return {"type": "epoch", "epoch": self.epoch, "step": self.step, "loss": self.loss_sum / 4}

    def save_at_epoch_end(self):
        return True

    def check_state_finite(self):
        if not torch.isfinite(self.w).all():
            raise SslAugError(f"non-finite weights at step {self.step}")

    def state_dict(self):
        return {"w": self.w.detach().clone(), "opt": self.opt.state_dict(), "step": self.step, "epoch": self.epoch,
                "pos": self.pos, "loss_sum": self.loss_sum, "lines": self.metrics.lines}

    def load_state_dict(self, state, path):
        with torch.no_grad():
            self.w.copy_(state["w"])
        self.opt.load_state_dict(state["opt"])
        self.step, self.epoch, self.pos, self.loss_sum = state["step"], state["epoch"], state["pos"], state["loss_sum"]
        self.metrics.lines = state["lines"]

    def write_state(self, state):
        return atomic_save(state, self.folder / "state.pt")

    def resume_path(self, resume):
        path = self.folder / "state.pt"
        return path if resume and path.is_file() else None

    def read_state(self, path):
        return load_weights_only(path)

    def stop_line(self, signum):
        return f"toy stopped after step {self.step}; state in {self.folder / 'state.pt'}"


def test_toy_loop_checkpoints_stops_on_a_signal_and_resumes_exactly(tmp_path, capsys):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    full = ToyLoop(tmp_path / "a")
    full.run()
    assert full.step == 12 and full.epoch == 3 and full.saved_step == 12
    records = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3] and records[-1]["loss"] < records[0]["loss"]

    stopped = ToyLoop(tmp_path / "b", signal_at=6)  # SIGTERM during step 7 (epoch 2): a state after step 7
    with pytest.raises(TrainingInterrupted) as exc:
        stopped.run()
    assert exc.value.code == 143 and exc.value.step == 7
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"ssl-aug: SIGTERM: toy stopped after step 7; state in {tmp_path / 'b' / 'state.pt'}"]
    saved = load_weights_only(tmp_path / "b" / "state.pt")
    assert (saved["step"], saved["epoch"], saved["pos"], saved["lines"]) == (7, 1, 3, 1)
    with open(tmp_path / "b" / "metrics.jsonl", "a") as f:  # what a run killed after its state may leave
        f.write('{"type": "epoch", "epoch": 2}\n{"torn')

    resumed = ToyLoop(tmp_path / "b")
    resumed.run(resume=True)
    assert resumed.step == 12 and torch.equal(resumed.w, full.w)
    assert (tmp_path / "b" / "metrics.jsonl").read_text() == (tmp_path / "a" / "metrics.jsonl").read_text()
    assert torch.equal(load_weights_only(tmp_path / "b" / "state.pt")["w"], full.w.detach())


def test_toy_loop_never_keeps_a_nonfinite_state(tmp_path):
    loop = ToyLoop(tmp_path, poison_at=4)  # NaN weights during step 5; the next state is due after step 6
    with pytest.raises(SslAugError, match="non-finite weights at step 6"):
        loop.run()
    saved = load_weights_only(tmp_path / "state.pt")
    assert saved["step"] == 4 and torch.isfinite(saved["w"]).all()  # the state of epoch 1's end is kept
