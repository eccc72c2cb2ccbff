"""A run folder is enough to resume, evaluate, export or extend a run, from any working directory.

The trainer writes the resolved recipe twice into the run: config.json (for programs) and config.toml
(for `ssl-aug train`). Paths in a recipe (output_dir, data.root, data.options.cache, data.options.groups)
are made absolute when a run starts, so the stored recipe does not depend on the directory it was
started from. A run folder written before paths were stored absolute is read with its relative paths
resolved against the directory the run was started from (the run folder minus its relative output_dir).
"""

from __future__ import annotations

import json
from pathlib import Path

from ssl_aug.config import apply_overrides, read_toml, resolve_recipe_path
from ssl_aug.errors import SslAugError
from ssl_aug.io import atomic_write_json, atomic_write_text
from ssl_aug.train.recipe_toml import dumps

__all__ = ["RUN_RECIPES", "is_run_folder", "read_recipe_source", "absolute_paths", "write_run_recipe"]

RUN_RECIPES = ("config.toml", "config.json")  # what a run folder holds its recipe in, preferred first
PATH_KEYS = ("output_dir", "data.root", "data.options.cache", "data.options.groups")


def is_run_folder(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and any((path / name).is_file() for name in RUN_RECIPES)


def _read(path: Path) -> dict:
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise SslAugError(f"recipe {path} is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise SslAugError(f"recipe {path} must hold a JSON object (a table of recipe sections)")
        return data
    return read_toml(path)


def _get(data: dict, key: str):
    node = data
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def read_recipe_source(recipe: str | Path) -> tuple[dict, Path | None]:
    """-> (recipe dict, run folder or None). `recipe`: a run folder (its config.toml, else config.json),
    a run's config.toml / config.json, any TOML recipe file, or a shipped recipe name. A run folder's
    recipe gets output_dir = the folder (wherever it was moved) and legacy relative paths made absolute."""
    path = Path(recipe).expanduser()
    run_dir = None
    if path.is_dir():
        if not is_run_folder(path):
            raise SslAugError(f"{path} is a folder without {' or '.join(RUN_RECIPES)}: give a run folder, a TOML "
                              "recipe file or a shipped recipe name (ssl-aug list recipes)")
        run_dir = path.resolve()
        path = next(run_dir / name for name in RUN_RECIPES if (run_dir / name).is_file())
    elif path.is_file() and path.name in RUN_RECIPES:
        run_dir = path.resolve().parent
    data = _read(path if path.is_file() else resolve_recipe_path(recipe))
    if run_dir is not None:
        started_in = run_dir
        for _ in Path(str(data.get("output_dir") or run_dir.name)).parts:
            started_in = started_in.parent
        relative = {k: v for k in PATH_KEYS
                    if isinstance(v := _get(data, k), str) and not Path(v).expanduser().is_absolute()}
        data = apply_overrides(data, {k: str((started_in / v).resolve()) for k, v in relative.items()})
        data["output_dir"] = str(run_dir)
    return data, run_dir


def absolute_paths(cfg, base: str | Path | None = None) -> None:
    """Make the recipe's paths absolute in place (relative ones resolved against `base`, default the
    working directory; `~` expanded)."""
    base = Path(base or Path.cwd())

    def absolute(value: str) -> str:
        return str((base / Path(value).expanduser()).resolve())

    cfg.output_dir = absolute(cfg.output_dir)
    if cfg.data.root:
        cfg.data.root = absolute(cfg.data.root)
    for key in ("cache", "groups"):
        if isinstance(cfg.data.options.get(key), str):
            cfg.data.options[key] = absolute(cfg.data.options[key])


def write_run_recipe(run_dir: str | Path, recipe: dict) -> None:
    """config.json and config.toml (what `ssl-aug train RUN` reads) of a run folder, written atomically."""
    run_dir = Path(run_dir)
    atomic_write_json(run_dir / "config.json", recipe)
    atomic_write_text(run_dir / "config.toml", "# the resolved recipe of this run: ssl-aug train THIS_FOLDER "
                      "--resume, or ssl-aug train THIS_FILE output_dir=NEW_RUN\n" + dumps(recipe))
