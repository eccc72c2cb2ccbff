"""`pip install .` (not editable) works outside the repository: the wheel carries the recipes as package
data, and recipe lookup does not depend on the current directory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHIPPED = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "ssl_aug" / "recipes").rglob("*.toml"))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """Build the wheel from a copy of the sources (so no build/ or egg-info lands in the repo)."""
    pytest.importorskip("setuptools")
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.cfg", "README.md"):
        if (REPO / name).is_file():
            shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "ssl_aug", src / "ssl_aug", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(root / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    wheels = list((root / "dist").glob("ssl_aug-*.whl"))
    assert len(wheels) == 1
    return wheels[0]


def test_wheel_contains_every_recipe(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert SHIPPED and "ssl_aug/recipes/quickstart.toml" in SHIPPED
    missing = [name for name in SHIPPED if name not in names]
    assert not missing, missing
    assert "ssl_aug/cli/__init__.py" in names and "ssl_aug/export/reader.py" in names


def test_installed_wheel_finds_recipes_from_another_directory(wheel, tmp_path):
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target",
                           str(site), str(wheel)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = ("import json, ssl_aug, ssl_aug.config as c; from ssl_aug.workflows.ablation import load_spec, plan_runs; "
            "spec, path = load_spec('ablate_quickstart'); runs = plan_runs(spec, path); "
            "print(json.dumps({'pkg': ssl_aug.__file__, 'recipe': str(c.resolve_recipe_path('quickstart')), "
            "'spec': str(path), 'cells': sorted({r.cell for r in runs}), "
            "'epochs': c.load_recipe('quickstart').train.epochs}))")
    env = dict(os.environ, PYTHONPATH=str(site))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=elsewhere, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(found["pkg"]).is_relative_to(site)  # the installed copy, not the repository
    assert Path(found["recipe"]).is_relative_to(site) and Path(found["spec"]).is_relative_to(site)
    assert found["cells"] == ["full", "no_color_distortion"] and found["epochs"] >= 1
    cli = subprocess.run([sys.executable, "-m", "ssl_aug", "ablate", "ablate_quickstart", "--dry-run"],
                         capture_output=True, text=True, cwd=elsewhere, env=env, timeout=300)
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert "no_color_distortion seed 0" in cli.stdout
