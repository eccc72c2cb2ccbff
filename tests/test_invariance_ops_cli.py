"""Probing any registered or Kornia op by name is reachable from the CLI (--invariance-op) and recipes
(eval.invariance_ops); unknown names are one line before any work."""

import json

import pytest

from cli_helpers import RECIPE, assert_one_error, run_cli
from ssl_aug.config import config_from_dict
from ssl_aug.errors import SslAugError
from ssl_aug.evaluation import evaluators_from_config


def test_eval_probes_named_ops(tmp_path, capsys):
    out = tmp_path / "e.json"
    code, lines, _ = run_cli(["eval", "random:small_cnn", "--data", "embedded", "--invariance-op", "blur",
                              "--invariance-op", "RandomErasing", "--train-subset", "100", "--test-subset", "50",
                              "--json", out, "--no-progress"], capsys)
    assert code == 0, lines
    families = json.loads(out.read_text())["invariance"]["families"]
    assert {"blur", "RandomErasing", "color_jitter"} <= set(families)
    assert all("variance" in families[name] for name in ("blur", "RandomErasing"))


def test_unknown_op_is_one_line(tmp_path, capsys):
    assert_one_error(["eval", "random:small_cnn", "--data", "embedded", "--invariance-op", "RandomNope",
                      "--json", tmp_path / "e.json"], capsys, "unknown op 'RandomNope'")
    with pytest.raises(SslAugError, match="unknown op 'RandomNope'"):  # the evaluators are built before any work
        evaluators_from_config(config_from_dict({"eval": {"invariance_ops": ["RandomNope"]}}).eval)
    recipe = tmp_path / "r.toml"
    recipe.write_text(RECIPE)
    assert_one_error(["train", recipe, f"output_dir={tmp_path / 'run'}", 'eval.invariance_ops=["RandomNope"]'],
                     capsys, "unknown op 'RandomNope'")
