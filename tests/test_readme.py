"""The README's examples run as written: its Python blocks (in order, in one fresh folder, offline on the
embedded data set) and every `ssl-aug COMMAND` its shell blocks name."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def test_readme_has_python_examples():
    code = "\n".join(blocks("python"))
    assert len(blocks("python")) >= 3
    assert "run_experiment" in code and "load_encoder" in code and "export_encoder" in code


@pytest.mark.slow
def test_python_blocks_run_as_written(tmp_path):
    pytest.importorskip("ssl_aug.models.small_cnn")
    env = dict(os.environ, SSL_AUG_DATA=str(tmp_path / "data"), SSL_AUG_CACHE=str(tmp_path / "cache"),
               OMP_NUM_THREADS="2", PYTHONWARNINGS="ignore")
    for i, code in enumerate(blocks("python")):
        script = tmp_path / f"block{i}.py"
        script.write_text(code)
        done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, f"README python block {i} failed:\n{code}\n{done.stderr[-3000:]}"
    assert (tmp_path / "runs" / "api_demo" / "eval.json").is_file()
    assert (tmp_path / "exported" / "encoder.json").is_file()


def test_shell_blocks_name_real_commands():
    from ssl_aug.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices
    named = re.findall(r"ssl-aug ([a-z]+)", "\n".join(blocks("bash")) + "\n" + README.read_text())
    assert named
    unknown = sorted({n for n in named if n not in commands})
    assert not unknown, f"README names ssl-aug commands that do not exist: {unknown}"


def test_citation_file_matches_the_package():
    from ssl_aug._version import __version__

    text = (README.parent / "CITATION.cff").read_text()
    fields = dict(re.findall(r"^([a-z-]+): (.+)$", text, flags=re.M))
    assert fields["cff-version"] == "1.2.0" and fields["version"] == __version__
    assert "ssl_aug" in fields["title"] and "authors:" in text
    yaml = pytest.importorskip("yaml")
    assert yaml.safe_load(text)["version"] == __version__
