"""A run leaves curves.png (loss, lr, kNN monitor) next to metrics.jsonl; train.logger = "tensorboard"
mirrors the metrics as TensorBoard scalars; a bad logger name is one line."""

import json

import pytest

from cli_helpers import RECIPE, assert_one_error, run_cli


def test_run_writes_training_curves(tmp_path, capsys):
    recipe = tmp_path / "r.toml"
    recipe.write_text(RECIPE)
    run = tmp_path / "run"
    code, lines, _ = run_cli(["train", recipe, f"output_dir={run}", "train.epochs=2", "train.log_every=1",
                              "eval.knn_every=1", "eval.monitor_train=20", "eval.monitor_test=10", "eval.knn_k=5",
                              "--no-progress"], capsys)
    assert code == 0, lines
    png = run / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("knn_top1" in r for r in records if r["type"] == "epoch")


def test_tensorboard_logger_mirrors_the_metrics(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    recipe = tmp_path / "r.toml"
    recipe.write_text(RECIPE)
    run = tmp_path / "run"
    code, lines, _ = run_cli(["train", recipe, f"output_dir={run}", "train.logger=tensorboard",
                              "train.log_every=1", "--no-progress"], capsys)
    assert code == 0, lines
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    losses = [e.value for e in events.Scalars("step/loss")]
    logged = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["type"] == "step"]
    assert losses == pytest.approx(logged, rel=1e-6)


def test_unknown_logger_is_one_line(tmp_path, capsys):
    recipe = tmp_path / "r.toml"
    recipe.write_text(RECIPE)
    assert_one_error(["train", recipe, f"output_dir={tmp_path / 'run'}", "train.logger=wandb"], capsys,
                     "train.logger", "none, tensorboard")
