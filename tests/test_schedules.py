"""Schedule contract: reference values, recipe parsing, exact values through the trainer and on resume."""

import json
import math
import shutil

import pytest

import toy_schedule  # noqa: F401  (registers "toy_square")
from cli_helpers import RECIPE, run_cli
from ssl_aug.config import config_from_dict, read_toml
from ssl_aug.errors import SslAugError
from ssl_aug.methods.byol import target_momentum
from ssl_aug.schedules import list_schedules, parse_schedule


def test_reference_values():
    cos = parse_schedule("method.m", {"schedule": "cosine", "start": 0.996, "end": 1.0})
    for step in (0, 1, 37, 99, 100, 150):  # BYOL's own formula is the same cosine
        assert cos.at(step, 10, 100) == pytest.approx(target_momentum(step, 100, 0.996, 1.0), abs=1e-15)
    lin = parse_schedule("method.t", {"schedule": "linear", "start": 0.04, "end": 0.07, "epochs": 3})
    assert [round(lin.at(s, 10, 100), 6) for s in (0, 15, 30, 90)] == [0.04, 0.055, 0.07, 0.07]
    step = parse_schedule("train.weight_decay", {"schedule": "step", "start": 1.0, "milestones": [0.5, 0.75],
                                                 "gamma": 0.1})
    assert [step.at(s, 10, 100) for s in (0, 49, 50, 74, 75, 99)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    warm = parse_schedule("method.x", {"schedule": "constant", "start": 2.0, "warmup_epochs": 1, "warmup_start": 0})
    assert [warm.at(s, 4, 40) for s in (0, 2, 4, 30)] == [0.0, 1.0, 2.0, 2.0]
    toy = parse_schedule("method.x", {"schedule": "toy_square", "start": 0.0, "end": 1.0})
    assert toy.at(50, 10, 100) == pytest.approx(0.25)
    assert {"constant", "linear", "cosine", "step", "toy_square"} <= set(list_schedules())


@pytest.mark.parametrize("table,match", [
    ({"schedule": "cosin", "start": 1}, "did you mean 'cosine'"),
    ({"schedule": "cosine"}, "needs a start value"),
    ({"schedule": "cosine", "start": math.nan}, "must be a finite number"),
    ({"schedule": "cosine", "start": 1, "ends": 2}, "did you mean 'end'"),
    ({"schedule": "linear", "start": 1, "epochs": 0}, "epochs = 0 must be > 0"),
    ({"schedule": "step", "start": 1, "milestones": [2]}, "milestones"),
])
def test_bad_tables_are_one_line(table, match):
    with pytest.raises(SslAugError, match=match) as e:
        parse_schedule("method.x", table)
    assert "\n" not in str(e.value)


def test_recipe_tables_move_to_schedules_and_round_trip(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text(RECIPE.replace('proj_dim = 8', 'proj_dim = 8\ntemperature = {schedule = "toy_square", '
                                   'start = 0.5, end = 0.2}'))
    cfg = config_from_dict(read_toml(path))
    assert cfg.method["temperature"] == 0.5
    assert cfg.schedules == {"method.temperature": {"schedule": "toy_square", "start": 0.5, "end": 0.2}}
    assert config_from_dict(cfg.to_dict()).schedules == cfg.schedules  # config.json reads back the same
    with pytest.raises(SslAugError, match="'train.lr' cannot follow a schedule; schedulable in"):
        config_from_dict({"train": {"lr": {"schedule": "cosine", "start": 1}}})


def test_toy_schedule_through_ssl_aug_train_and_exact_on_resume(tmp_path, capsys):
    recipe = tmp_path / "r.toml"
    recipe.write_text(RECIPE.replace('proj_dim = 8', 'proj_dim = 8\ntemperature = {schedule = "toy_square", '
                                     'start = 0.5, end = 0.1}') + "\n")
    common = ["train", recipe, "train.epochs=2", "train.log_every=1", "data.options.n_per_class=8",
              "train.checkpoint_every=3", "train.keep_checkpoints=10"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert run_cli(common + [f"output_dir={full}"], capsys)[0] == 0
    shutil.copytree(full, cut)  # the same run, cut back to its step-3 checkpoint, then resumed
    for path in (cut / "checkpoints").glob("*.pt"):
        if path.name != "step_3.pt":
            path.unlink()
    assert run_cli(common + [f"output_dir={cut}", "--resume"], capsys)[0] == 0

    def temps(run):
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r["method.temperature"] for r in rows if r["type"] == "step"}

    seen = temps(full)
    total = max(seen)
    assert seen[1] == pytest.approx(0.5) and seen[total] == pytest.approx(0.5 - 0.4 * ((total - 1) / total) ** 2)
    assert temps(cut) == seen  # the resumed run saw exactly the same values


def test_unknown_method_attribute_is_refused_before_training(tmp_path, capsys):
    recipe = tmp_path / "r.toml"
    recipe.write_text(RECIPE + '\n[schedules]\n"method.warmth" = {schedule = "linear", start = 1, end = 0}\n')
    code, err, _ = run_cli(["train", recipe, f"output_dir={tmp_path / 'run'}"], capsys)
    assert code == 2 and len(err) == 1 and "no float hyperparameter 'warmth'" in err[0]
