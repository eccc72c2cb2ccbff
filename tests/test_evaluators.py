"""Evaluator contract: a toy evaluator registered in one line runs after training, per epoch and from
ssl-aug eval; recipe keys and names are checked before any work."""

import json

import pytest
import torch

import toy_evaluator  # noqa: F401  (registers "toy_spread")
from cli_helpers import RECIPE, run_cli
from ssl_aug.config import config_from_dict
from ssl_aug.errors import SslAugError
from ssl_aug.evaluation import (EvalContext, build_evaluator, evaluators_from_config, list_evaluators,
                                run_evaluators)


def test_builtin_evaluators_are_registered_in_order():
    assert list_evaluators()[:4] == ["knn", "linear", "tta", "invariance"] and "toy_spread" in list_evaluators()


def test_recipe_keys_map_onto_evaluators():
    cfg = config_from_dict({"eval": {"knn_k": 7, "linear": {"epochs": 3}, "toy_spread": {"scale": 2.0, "every": 1}}})
    chosen = evaluators_from_config(cfg.eval)
    assert [e.name for e in chosen] == ["knn", "linear", "toy_spread"]
    assert chosen[0].config.k == [7] and chosen[1].config.epochs == 3 and chosen[2].config.scale == 2.0
    assert [e.name for e in evaluators_from_config(cfg.eval, final=False)] == ["toy_spread"]
    assert config_from_dict(cfg.to_dict()).eval.evaluators == cfg.eval.evaluators  # config.json reads back


@pytest.mark.parametrize("section,match", [
    ({"knn_kk": 5}, r"recipe key 'eval.knn_kk': unknown key; did you mean 'knn_k'\?"),
    ({"toy_spread": {"scal": 2}}, r"recipe key 'eval.toy_spread.scal': unknown key; did you mean 'scale'\?"),
    ({"toy_spread": {"scale": "big"}}, r"'eval.toy_spread.scale' = 'big' must be float"),
    ({"toy_spread": 3}, r"'eval.toy_spread' = 3 is not allowed; use true, false or a table"),
])
def test_bad_keys_are_one_line(section, match):
    with pytest.raises(SslAugError, match=match):
        evaluators_from_config(config_from_dict({"eval": section}).eval)


def test_context_runs_evaluators_in_order_and_shares_results():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (12, 3, 8, 8), dtype=torch.uint8, generator=g)
    y = torch.arange(12) % 3
    enc = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 4))
    ctx = EvalContext(enc, [0.5] * 3, [0.25] * 3, (x, y), (x[:6], y[:6]), progress=False)
    out = run_evaluators(ctx, [build_evaluator("knn", {"k": [3]}), build_evaluator("toy_spread", True)])
    f = ctx.features("test")
    assert out["toy_spread"]["spread"] == pytest.approx(float((f - f.mean(0)).norm(dim=1).mean()))
    assert out["num_train"] == 12 and out["dim"] == 4 and ctx.results["knn"]["k"] == 3


def test_toy_evaluator_through_train_per_epoch_and_eval(tmp_path, capsys):
    recipe = tmp_path / "r.toml"
    recipe.write_text(RECIPE.replace("final_knn = false", "final_knn = false\ntoy_spread = {every = 1}"))
    run = tmp_path / "run"
    code, err, _ = run_cli(["train", recipe, f"output_dir={run}", "train.epochs=2"], capsys)
    assert code == 0, err
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in epochs if "monitor_toy_spread_spread" in r] == [1, 2]
    assert json.loads((run / "eval.json").read_text())["toy_spread_spread"] > 0
    code, err, out = run_cli(["eval", run, "--evaluator", "toy_spread", "--json", tmp_path / "e.json"], capsys)
    assert code == 0, err
    assert "toy spread" in out and json.loads((tmp_path / "e.json").read_text())["toy_spread"]["bank"] > 0
    code, err, _ = run_cli(["eval", run, "--evaluator", "toy_sprd"], capsys)
    assert code == 2 and "did you mean 'toy_spread'" in err[0]
