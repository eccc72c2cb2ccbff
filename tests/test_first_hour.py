"""The first hour on a user's machine: recipes written back as TOML, `ssl-aug show`, a mistyped command,
the memory estimate and the one-line refusal with overrides that fit, and (slow) the whole journey on
a generated folder of 600 small images: train the CPU recipe, evaluate / export / resume / extend from
another directory using the run folder alone."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ssl_aug.cli import main
from ssl_aug.config import Config, config_from_dict, load_recipe, read_toml
from ssl_aug.errors import SslAugError
from ssl_aug.train.recipe_toml import dumps

REPO = Path(__file__).resolve().parent.parent


def test_toml_round_trip_of_every_shipped_training_recipe(tmp_path):
    for name in ("quickstart", "swav_imagefolder", "simclr_imagefolder_cpu", "swav_imagefolder_cpu", "byol_cifar10"):
        resolved = load_recipe(name).to_dict()
        path = tmp_path / f"{name}.toml"
        path.write_text(dumps(resolved))
        back = read_toml(path)
        expected = json.loads(json.dumps(resolved))  # what None-free TOML can hold: None keys are left out
        assert config_from_dict(back).to_dict() == expected, name


def test_toml_values_reference():
    text = dumps({"a": 1, "b": 0.1, "c": "x \"q\" é", "d": [1, 2], "t": {"k": True, "inf": math.inf, "none": None,
                                                                     "n": {"x": [0.5]}, "odd key": 1}})
    import tomllib

    assert tomllib.loads(text) == {"a": 1, "b": 0.1, "c": "x \"q\" é", "d": [1, 2],
                                   "t": {"k": True, "inf": math.inf, "n": {"x": [0.5]}, "odd key": 1}}


def test_show_prints_a_recipe_train_accepts(tmp_path, capsys):
    assert main(["show", "quickstart", "train.epochs=3", "eval.knn_k=20"]) == 0
    text = capsys.readouterr().out
    path = tmp_path / "shown.toml"
    path.write_text(text)
    cfg = load_recipe(path)
    assert cfg.train.epochs == 3 and cfg.eval.knn_k == 20 and cfg.model.backbone == "small_cnn"
    assert Path(cfg.output_dir).is_absolute()


def test_mistyped_command_has_one_prefix_and_a_suggestion(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["trian", "quickstart"])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and err.count("ssl-aug: error:") == 1 and "ssl-aug: error: ssl-aug:" not in err
    assert "did you mean 'train'?" in err and "\n" not in err


def test_bench_views_help_is_complete(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "views", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "side by side in one process" in out and "Writes BENCHMARKS.md#views." in out


def test_estimate_grows_with_batch_and_image_size():
    from ssl_aug.train.footprint import estimate_footprint

    cpu = torch.device("cpu")
    cfg = load_recipe("simclr_imagefolder_cpu")
    small = estimate_footprint(cfg, 600, 32, cpu)
    big = estimate_footprint(config_from_dict(dict(cfg.to_dict(), train=dict(cfg.to_dict()["train"], batch_size=512))),
                             600, 32, cpu)
    assert small.params > 1e5 and small.activations_per_image > 0 and small.rate > 0
    assert big.host > small.host and big.flops_per_step == pytest.approx(4 * small.flops_per_step)
    r50 = estimate_footprint(load_recipe("simclr_imagefolder"), 600, 256, cpu)
    assert r50.params > 2e7 and r50.activations_per_image > 100 * small.activations_per_image


def test_the_big_recipe_is_refused_in_one_line_naming_overrides_that_fit(monkeypatch):
    from ssl_aug.train.fit import check_fits_machine

    monkeypatch.setenv("SSL_AUG_MEMORY_LIMIT", "20")  # a 23 GB laptop with some memory in use
    cfg = load_recipe("simclr_imagefolder")
    with pytest.raises(SslAugError) as exc:
        check_fits_machine(cfg, 600, 256, torch.device("cpu"), name="simclr_imagefolder")
    msg = str(exc.value)
    assert "\n" not in msg and "does not fit this machine" in msg and "train.check_fit=false" in msg
    assert "model.backbone=small_cnn" in msg and "augment.size=32" in msg and "train.batch_size=" in msg
    off = config_from_dict(dict(cfg.to_dict(), train=dict(cfg.to_dict()["train"], check_fit=False)))
    assert check_fits_machine(off, 600, 256, torch.device("cpu")).startswith("estimate: ")
    fits = load_recipe("simclr_imagefolder_cpu")
    assert check_fits_machine(fits, 600, 32, torch.device("cpu")).startswith("estimate: ")


def test_extended_schedule_reference():
    from ssl_aug.optim import extended_schedule, warmup_cosine

    segments = [[0, 20], [20, 60]]
    assert [extended_schedule(s, segments[:1], 4) for s in range(20)] == [warmup_cosine(s, 20, 4) for s in range(20)]
    tail = [extended_schedule(s, segments, 4) for s in range(20, 60)]
    assert tail[:4] == [0.25, 0.5, 0.75, 1.0]  # min(4, 40 // 10) warm-up steps back to the peak
    assert all(a >= b for a, b in zip(tail[3:], tail[4:])) and tail[-1] < 0.01  # then cosine to the new end
    assert extended_schedule(10, segments, 4) == warmup_cosine(10, 20, 4)  # the steps already run keep theirs


def test_resume_with_more_epochs_adds_a_cosine_tail_and_fewer_are_refused(tmp_path):
    from trainer_fixtures import tiny_config, tiny_data

    from ssl_aug.train import Trainer

    data = tiny_data()
    first = Trainer(tiny_config(tmp_path, epochs=2), train_data=data, progress=False)
    first.fit()
    assert first.step == 6
    longer = Trainer(tiny_config(tmp_path, epochs=4), train_data=data, progress=False)
    longer.fit(resume=True)
    assert longer.step == 12 and longer.extended and longer.scheduler.segments == [[0, 6], [6, 12]]
    lrs = [r["lr"] for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
           if r["type"] == "step"]  # the lr of the step after each logged step
    assert len(lrs) == 12 and lrs[5] < 1e-6  # the first run's cosine ended at 0
    assert lrs[6] > 0.9 * 0.0125 and lrs[11] < 1e-6  # the tail restarts near the peak and decays to the new end
    assert read_toml(tmp_path / "run" / "config.toml")["train"]["epochs"] == 4  # the run's recipe says so now
    again = Trainer(tiny_config(tmp_path, epochs=4), train_data=data, progress=False)  # a plain resume keeps the tail
    again.fit(resume=True)
    assert again.step == 12 and again.scheduler.segments == [[0, 6], [6, 12]] and not again.extended
    shorter = Trainer(tiny_config(tmp_path, epochs=3), train_data=data, progress=False)
    with pytest.raises(SslAugError, match="cannot|not shorten"):
        shorter.fit(resume=True)


def _image_folder(root: Path, n: int = 600, side: int = 32) -> Path:
    """n small images of 3 classes (PNG and JPEG), the class in the dominant colour channel."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        c = i % 3
        pixels = rng.integers(0, 80, (side, side, 3), dtype=np.uint8)
        pixels[..., c] += 150
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / f"class{c}" / f"{i:03d}.{'png' if i % 2 else 'jpg'}")
    return root


def _cli(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.slow
def test_journey_on_a_folder_of_600_small_images(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SSL_AUG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SSL_AUG_MEMORY_LIMIT", "20")  # the 23 GB laptop of the journey, whatever runs the test
    _image_folder(tmp_path / "data" / "my_images")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")

    # the documented big recipe: refused in one line naming the overrides that fit, before any training
    code, out, err = _cli(capsys, "train", "simclr_imagefolder", "data.root=../data/my_images", "--no-progress")
    refusal = [line for line in err.splitlines() if line.startswith("ssl-aug: error:")]
    assert code == 2 and len(refusal) == 1 and "does not fit this machine" in refusal[0]
    assert "model.backbone=small_cnn" in refusal[0] and "train.batch_size=" in refusal[0]
    assert not (tmp_path / "a" / "runs" / "simclr_imagefolder" / "checkpoints").exists()
    assert "upscaled 8.0x" in err  # 32 px images packed at the recipe's 256 px are said to be

    # the CPU recipe, a relative data.root, kept tiny: 1 epoch of 6 steps
    code, out, err = _cli(capsys, "train", "simclr_imagefolder_cpu", "data.root=../data/my_images", "train.epochs=1",
                          "train.batch_size=100", "train.warmup_epochs=0", "--no-progress")
    run = tmp_path / "a" / "runs" / "simclr_imagefolder_cpu"
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"run directory: {run}" and lines[1].startswith("estimate: ") and "GiB" in lines[1]
    assert lines[-1].startswith(f"run directory: {run}") and "kNN top-1 (k=20)" in out and "{" not in out
    assert "32x32 px (the images' median shorter side of 32 px" in err  # packed at the images' own size
    assert len(lines) == len(set(lines)) and "warning" not in err  # no line twice, a sane recipe is silent
    recipe = read_toml(run / "config.toml")
    assert recipe["data"]["root"] == str(tmp_path / "data" / "my_images") and recipe["output_dir"] == str(run)
    assert json.loads((run / "eval.json").read_text())["steps"] == 6

    # from another directory, with the run folder alone: evaluate (the run's eval.knn_k), export, extend, resume
    monkeypatch.chdir(tmp_path / "b")
    rel = os.path.relpath(run, tmp_path / "b")
    code, out, err = _cli(capsys, "eval", rel, "--no-progress")
    assert code == 0, err
    assert list(json.loads((run / "eval_cli.json").read_text())["knn"]["by_k"]) == ["20"]
    code, out, err = _cli(capsys, "export", rel, "--out", "exported")
    assert code == 0 and (tmp_path / "b" / "exported" / "encoder.json").is_file(), err
    code, out, err = _cli(capsys, "train", rel, "--resume", "train.epochs=2", "--no-progress")
    assert code == 0, err
    assert json.loads((run / "eval.json").read_text())["steps"] == 12
    assert read_toml(run / "config.toml")["train"]["epochs"] == 2
    code, out, err = _cli(capsys, "train", os.path.join(rel, "config.toml"), "--resume", "eval.final_knn=false",
                          "--no-progress")
    assert code == 0, err
    assert json.loads((run / "eval.json").read_text())["steps"] == 12  # nothing left to train: resumed, done
    code, out, err = _cli(capsys, "train", rel, "--no-progress")  # without --resume: told how, nothing lost
    assert code == 2 and "--resume" in err


def test_a_run_folder_written_with_relative_paths_is_read_from_anywhere(tmp_path, monkeypatch):
    from ssl_aug.train.run_folder import read_recipe_source

    run = tmp_path / "project" / "runs" / "x"
    run.mkdir(parents=True)
    recipe = Config().to_dict()
    recipe.update(output_dir="runs/x", data=dict(recipe["data"], name="imagefolder", root="my_images"))
    (run / "config.json").write_text(json.dumps(recipe))  # as runs stored it before paths were made absolute
    monkeypatch.chdir(tmp_path)
    for source in (run, run / "config.json", "project/runs/x"):
        data, found = read_recipe_source(source)
        assert found == run and data["output_dir"] == str(run)
        assert data["data"]["root"] == str(tmp_path / "project" / "my_images")  # where the run was started from
    with pytest.raises(SslAugError, match="without config.toml or config.json"):
        read_recipe_source(tmp_path)
