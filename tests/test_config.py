import pytest

from ssl_aug.config import (RECIPE_DIR, Config, apply_overrides, config_from_dict, load_recipe, parse_value,
                            read_toml, resolve_recipe_path)
from ssl_aug.errors import SslAugError


def test_parse_value_types():
    assert parse_value("5") == 5 and isinstance(parse_value("5"), int)
    assert parse_value("0.25") == 0.25
    assert parse_value("true") is True
    assert parse_value("[0.2, 1.0]") == [0.2, 1.0]
    assert parse_value("sgd") == "sgd"
    assert parse_value('"a b"') == "a b"


def test_overrides_are_dotted_and_do_not_mutate():
    base = {"train": {"epochs": 3}, "augment": {"color_jitter": {"p": 0.8}}}
    out = apply_overrides(base, ["train.epochs=7", "augment.color_jitter.p=0", "data.options.size=24"])
    assert out["train"]["epochs"] == 7 and out["augment"]["color_jitter"]["p"] == 0
    assert out["data"]["options"]["size"] == 24
    assert base["train"]["epochs"] == 3


def test_defaults_round_trip():
    cfg = config_from_dict({})
    assert isinstance(cfg, Config)
    assert config_from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("data, fragment", [
    ({"train": {"epoch": 3}}, "unknown recipe key 'train.epoch'"),
    ({"train": {"epochs": "three"}}, "'train.epochs' must be int"),
    ({"train": {"optimizer": "rmsprop"}}, "choose one of: sgd, lars, adam, adamw"),
    ({"train": {"batch_size": 0}}, "'train.batch_size' must be > 0"),
    ({"bogus": 1}, "unknown recipe key 'bogus'"),
    ({"augment": {"mode": "turbo"}}, "choose one of: exact, fast"),
    ({"device": "tpu"}, "device"),
    ({"augment": {"multicrop": {"local_view": 6}}}, "augment.multicrop.local_view"),
])
def test_bad_recipes_give_one_line_errors(data, fragment):
    with pytest.raises(SslAugError) as info:
        config_from_dict(data)
    message = str(info.value)
    assert fragment in message and "\n" not in message


def test_unknown_key_error_lists_allowed_keys():
    with pytest.raises(SslAugError, match="allowed keys in \\[train\\]: epochs, max_steps"):
        config_from_dict({"train": {"epoch": 3}})


def test_int_accepted_for_float_keys():
    assert config_from_dict({"train": {"lr": 1}}).train.lr == 1.0


@pytest.mark.parametrize("name", ["quickstart", "simclr_cifar10", "swav_cifar10", "simclr_imagefolder",
                                  "swav_imagefolder"])
def test_shipped_recipes_load(name):
    cfg = load_recipe(name)
    from ssl_aug.train import build_views

    views = build_views(cfg.augment)  # the augment table is valid for the view engine too
    assert views is not None


def test_missing_recipe_lists_shipped_ones():
    with pytest.raises(SslAugError, match="quickstart"):
        resolve_recipe_path("no_such_recipe")


SHIPPED = sorted(p.stem for p in RECIPE_DIR.rglob("*.toml"))


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_file_is_valid_and_cites_only_what_ships(name):
    """Training recipes build their views; ablation specs plan every cell; no file cites a document that is
    not in the repository (the engineering guide is not shipped)."""
    from ssl_aug.workflows.ablation.spec import is_ablation_spec, load_spec, plan_runs
    from ssl_aug.augment.recipe import build_views

    path = resolve_recipe_path(name)
    assert "GUIDE" not in path.read_text(), path
    data = read_toml(path)
    if is_ablation_spec(data):
        assert plan_runs(*load_spec(name))
    elif set(data) <= set(Config().to_dict()):  # other workflow specs (searches, fine-tuning) have their own tests
        assert build_views(load_recipe(name).augment) is not None
