"""Typed recipe configs: load a TOML recipe, apply dotted `key=value` overrides, validate.

A recipe has the sections [data], [model], [method], [augment], [train], [eval] plus a few top-level
keys. Sections with a fixed schema are dataclasses; [method] and [augment] are validated by the
method builder and by `ViewSpec.from_dict` respectively, so their allowed keys live in one place.
"""

from __future__ import annotations

import copy
import dataclasses
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from ssl_aug.errors import SslAugError
from ssl_aug.registry import check_keys
from ssl_aug.schedules import parse_schedule, split_schedules

RECIPE_DIR = Path(__file__).resolve().parent / "recipes"  # package data: ssl_aug/recipes/*.toml


@dataclass
class DataConfig:
    name: str = "embedded"
    root: Optional[str] = None  # None: $SSL_AUG_DATA, then ~/.cache/ssl_aug
    download: bool = False
    subset: int = 0  # >0: a fixed (seed 0) class-balanced subset of the training split
    split: str = "train"  # the split trained on (e.g. stl10: "unlabeled", "train+unlabeled")
    stream: bool = False  # true: read npz shards batch by batch (data larger than memory) instead of loading all
    options: dict = field(default_factory=dict)  # extra keyword arguments for load_dataset


@dataclass
class ModelConfig:
    backbone: str = "small_cnn"
    backbone_args: dict = field(default_factory=dict)
    sync_batchnorm: object = "auto"  # true | false | "auto": on when several ranks train a model with BatchNorm


@dataclass
class MultiCropConfig:
    local_views: int = 0
    size: int = 16
    scale: list = field(default_factory=lambda: [0.05, 0.14])


@dataclass
class TrainConfig:
    epochs: int = 10
    max_steps: int = 0  # >0 stops after this many optimiser steps (for smoke runs)
    batch_size: int = 256
    optimizer: str = "sgd"
    lr: float = 0.3  # base learning rate, scaled by batch_size/256 when lr_scaling = "linear"
    lr_scaling: str = "linear"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.0
    amp: str = "none"
    channels_last: bool = False
    grad_clip: float = 0.0
    log_every: int = 10
    checkpoint_every: int = 0  # steps; 0 = at the end of every epoch only
    keep_checkpoints: int = 1  # step files kept (last.pt is a hard link to the newest): what resume needs
    threads: int = 0  # 0 = torch default
    view_candidates: int = 1  # >1: hard view sampling, keep the highest-loss of K candidate views per image
    deterministic: bool = False  # true: deterministic CUDA kernels (bit-identical resume on GPU, slower)
    logger: str = "none"  # "tensorboard": also write metrics as TensorBoard scalars into <run>/tensorboard
    strict: bool = False  # true: a sanity warning (e.g. warm-up longer than the run) stops the run before it starts
    check_fit: bool = True  # false: start even when the memory estimate says the run will not fit the machine


@dataclass
class EvalConfig:
    knn_k: int = 200
    knn_temperature: float = 0.1
    knn_every: int = 0  # epochs between online kNN checks; 0 = only at the end
    monitor_train: int = 5000  # images of the train split used as the monitor's bank
    monitor_test: int = 1000
    final_knn: bool = True
    linear: bool = False  # linear probe on frozen features after training
    invariance: bool = False  # invariance probe after training
    invariance_ops: list = field(default_factory=list)  # also probe these registered / kornia ops by name
    test_split: str = "test"  # "train": the bank's own images, scored leave-one-out
    knn_index: str = "flat"  # "flat": exact search; "ivf": faiss IVF (approximate, agreement with exact reported)
    knn_nlist: int = 0  # IVF lists (0 = about 4 * sqrt(bank size))
    knn_nprobe: int = 16  # IVF lists searched per query
    tta: bool = False  # 10-crop + flip test-time augmentation beside plain accuracy/ECE (linear probe if eval.linear, else kNN)
    online_linear: bool = False  # linear head on detached features trained alongside the SSL loss (accuracy per epoch)
    evaluators: dict = field(default_factory=dict)  # eval.<name> = true | {its keys}: registered evaluators


@dataclass
class Config:
    seed: int = 0
    device: str = "auto"
    output_dir: str = "runs/default"
    description: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: dict = field(default_factory=lambda: {"name": "simclr"})
    augment: dict = field(default_factory=dict)  # ViewSpec keys + mode, views, multicrop
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    schedules: dict = field(default_factory=dict)  # "method.KEY" / "train.KEY" -> schedule table (ssl_aug.schedules)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


CHOICES = {
    "train.optimizer": ("sgd", "lars", "adam", "adamw"),
    "train.lr_scaling": ("linear", "none"),
    "train.amp": ("none", "bf16", "fp16"),
    "train.logger": ("none", "tensorboard"),
    "eval.knn_index": ("flat", "ivf"),
}
AUGMENT_EXTRA_KEYS = {"mode": "exact", "views": 2, "multicrop": None, "preset": None}


def _check_type(key: str, value: Any, annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        annotation = [a for a in typing.get_args(annotation) if a is not type(None)][0]
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    expected = annotation if isinstance(annotation, type) else None
    if expected is not None and (not isinstance(value, expected) or (expected is int and isinstance(value, bool))):
        raise SslAugError(f"recipe key '{key}' must be {expected.__name__}, got {value!r} ({type(value).__name__})")
    return value


def _build(cls, data: dict, prefix: str):
    if not isinstance(data, dict):
        raise SslAugError(f"recipe section '{prefix.rstrip('.')}' must be a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    check_keys(sorted(data), names, "recipe key", prefix, f" in [{prefix.rstrip('.') or 'top level'}]")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        key = prefix + name
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, key + ".")
        else:
            kwargs[name] = _check_type(key, value, hint)
            if key in CHOICES and kwargs[name] not in CHOICES[key]:
                raise SslAugError(f"recipe key '{key}' = {value!r} is not allowed; choose one of: "
                                  f"{', '.join(CHOICES[key])}")
    return cls(**kwargs)


SCHEDULABLE_TRAIN = ("weight_decay", "momentum")


def _pull_schedules(data: dict) -> dict:
    """Move schedule tables written in place of a number ([method] keys, train.weight_decay /
    train.momentum) into data["schedules"], leaving the value at step 0 in their place; check every table."""
    schedules = data.get("schedules", {})
    if not isinstance(schedules, dict):
        raise SslAugError(f"recipe section 'schedules' must be a table of \"section.key\" = {{schedule = ...}}, "
                          f"got {schedules!r}")
    schedules = dict(schedules)
    for section, keys in (("method", None), ("train", SCHEDULABLE_TRAIN)):
        if isinstance(data.get(section), dict):
            data[section], found = split_schedules(data[section], section, keys)
            schedules.update(found)
    for key, table in schedules.items():
        section, _, name = key.partition(".")
        if section not in ("method", "train") or not name or (section == "train" and name not in SCHEDULABLE_TRAIN):
            raise SslAugError(f"schedules key {key!r} is not schedulable; use method.KEY or "
                              f"train.{{{', '.join(SCHEDULABLE_TRAIN)}}}")
        parse_schedule(key, table)
    if schedules:
        data["schedules"] = schedules
    return data


def _pull_evaluators(data: dict) -> dict:
    """[eval] keys that are not EvalConfig fields, and tables given for the on/off keys (linear, tta,
    invariance), name registered evaluators: move them into eval.evaluators (names are checked against the
    evaluator registry before any work, by the workflow that runs them)."""
    section = data.get("eval")
    if not isinstance(section, dict):
        return data
    fields = {f.name for f in dataclasses.fields(EvalConfig)}
    section = dict(section)
    tables = section.pop("evaluators", None) or {}
    if not isinstance(tables, dict):
        raise SslAugError(f"recipe key 'eval.evaluators' = {tables!r} is not allowed; use a table of evaluator "
                          "name = true | {its keys}, or write eval.NAME = ... directly")
    tables = dict(tables)
    for key in list(section):
        value = section[key]
        if key not in fields or (key in ("linear", "tta", "invariance") and isinstance(value, dict)):
            tables[key] = section.pop(key)
            if key in fields:
                section[key] = True
    if tables:
        section["evaluators"] = tables
    data["eval"] = section
    return data


def config_from_dict(data: dict) -> Config:
    """Validate a plain nested dict (e.g. a parsed recipe) into a Config."""
    cfg = _build(Config, _pull_evaluators(_pull_schedules(copy.deepcopy(data))), "")
    from ssl_aug.recipe_checks import check_recipe_values  # every value finite, in range, valid text

    check_recipe_values(cfg)
    _validate(cfg)
    return cfg


def _validate(cfg: Config) -> None:
    positive = {"train.epochs": cfg.train.epochs, "train.batch_size": cfg.train.batch_size,
                "train.log_every": cfg.train.log_every, "train.keep_checkpoints": cfg.train.keep_checkpoints,
                "eval.knn_k": cfg.eval.knn_k, "eval.knn_nprobe": cfg.eval.knn_nprobe}
    for key, value in positive.items():
        if value <= 0:
            raise SslAugError(f"recipe key '{key}' must be > 0, got {value}")
    if cfg.train.view_candidates < 1:
        raise SslAugError(f"recipe key 'train.view_candidates' must be an integer >= 1 (1 = random views), "
                          f"got {cfg.train.view_candidates}")
    if cfg.eval.invariance_ops and not all(isinstance(name, str) for name in cfg.eval.invariance_ops):
        raise SslAugError(f"recipe key 'eval.invariance_ops' = {cfg.eval.invariance_ops!r} must be a list of op "
                          "names, e.g. [\"blur\", \"RandomErasing\"]")  # the names: by the invariance evaluator
    if cfg.eval.knn_nlist < 0:
        raise SslAugError(f"recipe key 'eval.knn_nlist' must be >= 0 (0 = automatic), got {cfg.eval.knn_nlist}")
    if not isinstance(cfg.method.get("name"), str):
        raise SslAugError("recipe key 'method.name' is required: a registered method (`ssl-aug list methods`), "
                          "e.g. simclr")
    extra = cfg.augment.get("multicrop")
    if extra is not None:
        _build(MultiCropConfig, extra, "augment.multicrop.")
    mode = cfg.augment.get("mode", "exact")
    if mode not in ("exact", "fast"):
        raise SslAugError(f"recipe key 'augment.mode' = {mode!r} is not allowed; choose one of: exact, fast")
    views = cfg.augment.get("views", 2)
    if not isinstance(views, int) or isinstance(views, bool) or views < 1:
        raise SslAugError(f"recipe key 'augment.views' must be an integer >= 1, got {views!r}")
    if cfg.device not in ("auto", "cpu") and not cfg.device.startswith("cuda"):
        raise SslAugError(f"recipe key 'device' = {cfg.device!r} is not allowed; choose auto, cpu, cuda or cuda:N")


def parse_value(text: str) -> Any:
    """Parse an override value as TOML (numbers, booleans, lists, quoted strings); bare words are strings."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def set_dotted(data: dict, key: str, value: Any) -> None:
    """Set data['a']['b']['c'] = value for key 'a.b.c', creating tables as needed."""
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise SslAugError(f"override '{key}': '{part}' is a value, not a table")
        node = child
    node[parts[-1]] = value


def apply_overrides(data: dict, overrides: list[str] | dict) -> dict:
    """Return a copy of `data` with `key=value` strings (or a {dotted key: value} dict) applied."""
    data = copy.deepcopy(data)
    items = overrides.items() if isinstance(overrides, dict) else []
    if not isinstance(overrides, dict):
        parsed = []
        for item in overrides:
            if "=" not in item:
                raise SslAugError(f"override {item!r} must look like key=value, e.g. train.epochs=5")
            key, text = item.split("=", 1)
            parsed.append((key.strip(), parse_value(text.strip())))
        items = parsed
    for key, value in items:
        set_dotted(data, key, value)
    return data


def resolve_recipe_path(recipe: str | Path) -> Path:
    """A path to a TOML file, or the name of a shipped recipe (e.g. 'quickstart')."""
    path = Path(recipe)
    if path.is_file():
        return path
    for candidate in (RECIPE_DIR / f"{recipe}.toml", RECIPE_DIR / str(recipe)):
        if candidate.is_file():
            return candidate
    shipped = sorted(p.stem for p in RECIPE_DIR.glob("*.toml")) if RECIPE_DIR.is_dir() else []
    raise SslAugError(f"recipe {str(recipe)!r} not found: give a TOML file or one of: {', '.join(shipped)}")


def read_toml(path: str | Path) -> dict:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise SslAugError(f"recipe {path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise SslAugError(f"recipe {path} is not UTF-8 text (byte {exc.start}): save it as UTF-8") from None
    except OSError as exc:
        raise SslAugError(f"recipe {path} cannot be read: {exc.strerror or exc}") from None


def load_recipe(recipe: str | Path, overrides: list[str] | dict = ()) -> Config:
    """Load a TOML recipe (path or shipped name), apply overrides, validate."""
    data = read_toml(resolve_recipe_path(recipe))
    return config_from_dict(apply_overrides(data, overrides))
