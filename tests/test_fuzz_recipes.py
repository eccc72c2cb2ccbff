"""A fuzzed recipe surface: random values (NaN, inf, negative, huge, wrong type, text that is not UTF-8)
at every recipe key (every field of the Config dataclasses, every option of every method, every
[augment] key) and at the train command's options. Each example must end in one `ssl-aug: error:` line
and nothing written, or be accepted and then build the model, the views and one loss without any
exception other than SslAugError. Bounded: a fixed number of examples per test (SSL_AUG_FUZZ_EXAMPLES,
default 100), derandomised, so the suite stays fast and repeatable; raise it to hunt for new classes."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import typing

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from cli_helpers import RECIPE, run_cli  # noqa: E402
from ssl_aug.config import Config  # noqa: E402

pytest.importorskip("ssl_aug.models.small_cnn")

FUZZ = settings(max_examples=int(os.environ.get("SSL_AUG_FUZZ_EXAMPLES", 100)), deadline=None,
                derandomize=True, suppress_health_check=list(HealthCheck), database=None)


def config_keys(cls=Config, prefix: str = "") -> list[str]:
    """Every dotted key of the typed recipe sections."""
    keys = []
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        keys += config_keys(hint, f"{prefix}{f.name}.") if dataclasses.is_dataclass(hint) else [prefix + f.name]
    return keys


def method_keys() -> list[tuple[str, str]]:
    from ssl_aug.methods import METHODS, method_options

    return [(name, f"method.{opt}") for name in sorted(METHODS) for opt in method_options(name)]


def augment_keys() -> list[str]:
    from ssl_aug.augment.spec import allowed_keys
    from ssl_aug.config import AUGMENT_EXTRA_KEYS

    keys = [f"augment.{k}" for k in allowed_keys() + list(AUGMENT_EXTRA_KEYS)]
    keys += [f"augment.color_jitter.{k}" for k in ("brightness", "contrast", "saturation", "hue", "p")]
    keys += [f"augment.multicrop.{k}" for k in ("local_views", "size", "scale")]
    return keys


NOT_UTF8 = b"caf\xe9\xff".decode("utf-8", "surrogateescape")
SPECIAL = [math.nan, math.inf, -math.inf, -1, -1.5, 0, 0.0, 2**31, 2**63 - 1, -(2**63), 1e308, 1e-320,
           True, "", "x", NOT_UTF8, "a\x00b", [], [math.nan], [1, 2, 3], {}, {"a": 1}, [[1]]]
VALUES = st.one_of(
    st.sampled_from(SPECIAL),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.integers(min_value=-2, max_value=64),  # small values in and just out of range reach the model build
    st.floats(min_value=-0.5, max_value=2.0),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.lists(st.one_of(st.floats(), st.integers(-10, 10)), max_size=4),
)


def toml_value(value) -> str:
    """The override text for `value` (what a user types after key=)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value == math.inf else "-inf" if value == -math.inf
                                                 else repr(value))
    if isinstance(value, str):
        surrogates = any("\ud800" <= c <= "\udfff" for c in value)
        return value if surrogates else json.dumps(value)  # not UTF-8: bare text, as a shell would pass it
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    return str(value)


@pytest.fixture
def harness(tmp_path, monkeypatch):
    """-> check(method, key, value): run `ssl-aug train` with one override and check the outcome."""
    from ssl_aug.workflows import experiment

    monkeypatch.setenv("SSL_AUG_CACHE", str(tmp_path / "cache"))
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RECIPE.replace('name = "embedded"', f'name = "embedded"\nroot = "{tmp_path / "data"}"'))
    accepted = []

    def dry_run(cfg, resume=False, progress=True, run_dir=None):
        """Instead of training: build what training builds first and compute one loss (no data, no files)."""
        from ssl_aug.augment.recipe import build_views
        from ssl_aug.train.setup import build_model

        method = build_model(cfg)
        views = build_views(cfg.augment)(torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8))
        loss, _ = method(views, step=0, epoch=0)
        accepted.append(float(loss.detach()))
        return {"steps": 0, "epochs": 0, "train_time_s": 0.0, "final_loss": float(loss.detach())}

    monkeypatch.setattr(experiment, "run_experiment", dry_run)

    def check(method: str, key: str, value, capsys) -> None:
        out = tmp_path / "run"
        before = sorted(p.name for p in tmp_path.iterdir())
        argv = ["train", recipe, f"method.name={method}", f"{key}={toml_value(value)}",
                f"output_dir={json.dumps(str(out))}", "--no-progress"]
        n = len(accepted)
        code, lines, _ = run_cli(argv, capsys)  # any exception but SslAugError fails the test here
        text = "\n".join(lines)
        assert "Traceback" not in text, (key, value, text)
        if code != 0:
            assert code == 2 and len(lines) == 1 and lines[0].startswith("ssl-aug: error: "), (key, value, text)
            assert len(accepted) == n
        assert sorted(p.name for p in tmp_path.iterdir() if p.name != "cache") == \
            [p for p in before if p != "cache"], (key, value)  # nothing written (the dry run writes nothing either)

    return check


@FUZZ
@given(key=st.sampled_from(config_keys()), value=VALUES)
def test_fuzz_typed_recipe_keys(harness, capsys, key, value):
    harness("simclr", key, value, capsys)


@FUZZ
@given(pair=st.sampled_from(method_keys()), value=VALUES)
def test_fuzz_method_options(harness, capsys, pair, value):
    harness(pair[0], pair[1], value, capsys)


@FUZZ
@given(key=st.sampled_from(augment_keys()), value=VALUES)
def test_fuzz_augment_keys(harness, capsys, key, value):
    harness("simclr", key, value, capsys)


@FUZZ
@given(value=st.one_of(st.text(max_size=12), st.sampled_from(["", NOT_UTF8, "a\x00b", "-", "--resume"])))
def test_fuzz_train_output_dir_option(harness, capsys, tmp_path, value):
    """--output-dir with any text: a run folder name, or one line."""
    from ssl_aug.workflows import experiment

    code, lines, _ = run_cli(["train", tmp_path / "recipe.toml", "--output-dir", value, "--no-progress"], capsys)
    assert "Traceback" not in "\n".join(lines)
    assert code == 0 or (code == 2 and len(lines) == 1 and "error" in lines[0]), (value, lines)
    assert callable(experiment.run_experiment)


def test_config_keys_cover_every_section():
    keys = config_keys()
    assert {"seed", "train.lr", "eval.knn_k", "data.options", "model.backbone_args"} <= set(keys)
    assert len(keys) == len(set(keys)) > 40


PACK_VALUES = st.one_of(st.integers(min_value=-(2**63), max_value=2**63), st.sampled_from(["0", "-1", "1e3", "x", "",
                                                                                          NOT_UTF8, "nan", "inf"]))


@FUZZ
@given(option=st.sampled_from(["--size", "--workers", "--shard-size"]), value=PACK_VALUES)
def test_fuzz_data_pack_options(tmp_path_factory, capsys, option, value):
    """`ssl-aug data pack` numeric options: packed, or one line and no destination folder."""
    from PIL import Image

    tmp = tmp_path_factory.mktemp("pack")
    (tmp / "src" / "a").mkdir(parents=True)
    Image.new("RGB", (6, 5), (9, 99, 199)).save(tmp / "src" / "a" / "x.png")
    code, lines, _ = run_cli(["data", "pack", tmp / "src", tmp / "dst", option, str(value), "--quiet"], capsys)
    assert "Traceback" not in "\n".join(lines)
    if code != 0:
        assert code == 2 and len(lines) == 1 and "error" in lines[0], (option, value, lines)
        assert not (tmp / "dst").exists(), (option, value)


def finetune_keys() -> list[str]:
    from ssl_aug.evaluation.finetune import FinetuneConfig

    return [f.name for f in dataclasses.fields(FinetuneConfig)]


@FUZZ
@given(key=st.sampled_from(finetune_keys()), value=VALUES)
def test_fuzz_finetune_settings(tmp_path_factory, monkeypatch, capsys, key, value):
    """`ssl-aug finetune ENCODER key=value`: one line and nothing written, or accepted and then one epoch of
    real fine-tuning on 16 toy images runs without any exception other than SslAugError."""
    from ssl_aug.cli import finetune_run
    from ssl_aug.evaluation.finetune import finetune

    def one_epoch(encoder, mean, std, train, test, cells, seeds, out_dir, progress=True, on_result=None):
        for cell in cells.values():
            finetune(encoder, mean, std, train, test, {**cell, "epochs": min(cell.get("epochs", 1), 1)},
                     progress=False)
        return {}

    toy = (torch.randint(0, 256, (16, 3, 16, 16), generator=torch.Generator().manual_seed(0), dtype=torch.uint8),
           torch.arange(16) % 2)
    monkeypatch.setattr(finetune_run, "run_cells", one_epoch)
    monkeypatch.setattr(finetune_run, "_data", lambda *a: (toy, toy, "toy", "toy split"))
    tmp = tmp_path_factory.mktemp("finetune")
    argv = ["finetune", "random:small_cnn", f"{key}={toml_value(value)}", "--output-dir", tmp / "out",
            "--no-progress"]
    code, lines, _ = run_cli(argv, capsys)  # any exception but SslAugError fails the test here
    assert "Traceback" not in "\n".join(lines)
    if code != 0:
        assert code == 2 and len(lines) == 1 and lines[0].startswith("ssl-aug: error: "), (key, value, lines)
        assert not (tmp / "out").exists(), (key, value)


EVAL_VALUES = st.one_of(st.sampled_from(["0", "-1", "1e3", "x", "", NOT_UTF8, "nan", "inf", "-inf", "0.0", "1e-320",
                                         str(2**63), "1.5"]),
                        st.integers(min_value=-(2**63), max_value=2**63), st.floats(allow_nan=True).map(repr))


@FUZZ
@given(option=st.sampled_from(["--k", "--temperature", "--nlist", "--nprobe", "--train-subset", "--test-subset",
                               "--severity"]), value=EVAL_VALUES)
def test_fuzz_eval_options(tmp_path_factory, monkeypatch, capsys, option, value):
    """`ssl-aug eval` numeric options on 240 toy images: evaluated, or one line and no output file."""
    from ssl_aug.cli import eval_run

    g = torch.Generator().manual_seed(0)
    toy = (torch.randint(0, 256, (240, 3, 16, 16), generator=g, dtype=torch.uint8), torch.arange(240) % 3)
    monkeypatch.setattr(eval_run, "load_eval_data", lambda *a, **k: (
        (toy, toy), "toy", "toy split", {"test_groups": None, "classes": None, "group_names": None}))
    out = tmp_path_factory.mktemp("eval") / "eval.json"
    extra = ["--robustness", "--corruption", "brightness"] if option == "--severity" else []
    code, lines, _ = run_cli(["eval", "random:small_cnn", option, str(value), *extra, "--json", out, "--no-progress"],
                             capsys)
    assert "Traceback" not in "\n".join(lines)
    if code != 0:
        assert code == 2 and len(lines) == 1 and "error" in lines[0], (option, value, lines)
        assert not out.exists(), (option, value)
