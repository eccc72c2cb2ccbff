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
