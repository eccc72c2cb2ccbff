"""The README and the documentation site stay true: the README leads with the two set-up commands and fits a
screen; its Python blocks and the docs' Python blocks run as written (offline, on the embedded data set);
every `ssl-aug COMMAND` they name exists; `mkdocs build --strict` passes (broken links and references fail)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
SETUP = ('python3 -m venv .venv && .venv/bin/pip install -e ".[plot,dev]" && .venv/bin/ssl-aug quickstart\n'
         ".venv/bin/python -m pytest\n")
RUNNABLE_PAGES = ["getting-started.md"]  # pages whose ```python blocks run in order in one folder


def blocks(language: str, path: Path = README) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", path.read_text(), flags=re.S | re.M)


def test_readme_leads_with_the_two_commands_and_fits_a_screen():
    text = README.read_text()
    assert len(text.splitlines()) <= 150
    first = re.search(r"^```bash\n(.*?)^```", text, flags=re.S | re.M)
    assert first.group(1) == SETUP
    assert text.index("```bash") < text.index("\n## ")  # before any section
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'pip install --quiet -e ".[plot,dev]"' in ci and ".venv/bin/python -m pytest" in ci


def test_readme_has_python_examples():
    code = "\n".join(blocks("python"))
    assert len(blocks("python")) >= 3
    assert "run_experiment" in code and "load_encoder" in code and "export_encoder" in code


def test_docs_speak_of_the_product_only():
    pages = [README] + [p for p in DOCS.rglob("*.md") if p.name != "INTERFACES.md"]
    bad = re.compile(r"\bissue \d+|measured here|this round|/work/", re.I)
    found = [f"{p.name}: {m.group(0)}" for p in pages for m in bad.finditer(p.read_text())]
    assert not found, found


def _run_blocks(codes: list[str], folder: Path, what: str, threads: int = 2) -> None:
    env = dict(os.environ, SSL_AUG_DATA=str(folder / "data"), SSL_AUG_CACHE=str(folder / "cache"),
               OMP_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore")
    for i, code in enumerate(codes):
        script = folder / f"block{i}.py"
        script.write_text(code)
        done = subprocess.run([sys.executable, str(script)], cwd=folder, env=env, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, f"{what} python block {i} failed:\n{code}\n{done.stderr[-3000:]}"


@pytest.mark.slow
def test_python_blocks_run_as_written(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    pytest.importorskip("ssl_aug.models.small_cnn")
    jobs = [(blocks("python"), tmp_path, "README")]
    for page in RUNNABLE_PAGES:
        folder = tmp_path / page.replace(".md", "")
        folder.mkdir()
        codes = blocks("python", DOCS / page)
        assert codes, f"docs/{page} has no python blocks"
        jobs.append((codes, folder, f"docs/{page}"))
    with ThreadPoolExecutor(2) as pool:  # each page's blocks in order in its own folder; the pages side by side
        list(pool.map(lambda job: _run_blocks(*job, threads=1), jobs))
    assert (tmp_path / "runs" / "api_demo" / "eval.json").is_file()
    assert (tmp_path / "exported" / "model.safetensors").is_file()


def test_shell_blocks_name_real_commands():
    from ssl_aug.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices
    texts = [README.read_text()] + [p.read_text() for p in DOCS.rglob("*.md")]
    named = re.findall(r"ssl-aug ([a-z]+)", "\n".join(texts))
    assert named
    unknown = sorted({n for n in named if n not in commands})
    assert not unknown, f"README or docs name ssl-aug commands that do not exist: {unknown}"


def test_readme_links_exist():
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README.read_text())
    missing = [link for link in links if not link.startswith("http") and not (ROOT / link).exists()]
    assert links and not missing, missing


@pytest.mark.slow
def test_mkdocs_build_strict(tmp_path):
    for module in ("mkdocs", "material", "mkdocstrings_handlers.python"):
        pytest.importorskip(module, reason="mkdocs-material and mkdocstrings-python are not installed "
                                           "(pip install 'ssl_aug[docs]')")
    env = dict(os.environ, PYTHONPATH=str(ROOT), NO_MKDOCS_2_WARNING="1")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    site = tmp_path / "site"
    assert (site / "reference" / "recipe-keys" / "index.html").is_file()
    keys = (site / "reference" / "recipe-keys" / "index.html").read_text()
    assert "train.batch_size" in keys and "augment.color_jitter.p" in keys and "method.temperature" in keys
    assert "ssl-aug train" in (site / "reference" / "cli" / "index.html").read_text()
    assert "NTXentLoss" in (site / "reference" / "api" / "index.html").read_text()


def test_citation_file_matches_the_package():
    from ssl_aug._version import __version__

    text = (README.parent / "CITATION.cff").read_text()
    fields = dict(re.findall(r"^([a-z-]+): (.+)$", text, flags=re.M))
    assert fields["cff-version"] == "1.2.0" and fields["version"] == __version__
    assert "ssl_aug" in fields["title"] and "authors:" in text
    yaml = pytest.importorskip("yaml")
    assert yaml.safe_load(text)["version"] == __version__
