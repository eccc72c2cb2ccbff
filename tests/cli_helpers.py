"""Shared by the CLI tests: a tiny recipe and one-line-error assertions over ssl_aug.cli.main."""

from __future__ import annotations

import re

from ssl_aug.cli import main

RECIPE = """
seed = 0
device = "cpu"
[data]
name = "embedded"
options = {n_per_class = 4, size = 16}
[model]
backbone = "small_cnn"
[method]
name = "simclr"
proj_hidden_dim = 16
proj_dim = 8
[augment]
size = 16
[train]
epochs = 1
batch_size = 8
[eval]
final_knn = false
"""


PROGRESS = re.compile(r"\d+%\|")  # tqdm progress-bar lines (stderr) are not error output


def run_cli(argv, capsys):
    """-> (exit code, stderr lines without progress bars, stdout) of ssl_aug.cli.main(argv);
    argparse's SystemExit counts as an exit code."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip() and not PROGRESS.search(line)]
    return code, lines, captured.out


def assert_one_error(argv, capsys, *words):
    """Exit code 2 and stderr (progress bars and one-line sanity warnings aside) is exactly one
    'ssl-aug: error: ' line holding `words`."""
    code, lines, _ = run_cli(argv, capsys)
    lines = [line for line in lines if not line.startswith("warning: ")]
    text = "\n".join(lines)
    assert "Traceback" not in text, text
    assert code == 2, (code, text)
    assert len(lines) == 1 and lines[0].startswith("ssl-aug: error: "), text
    for word in words:
        assert word.lower() in lines[0].lower(), (word, lines[0])
    return lines[0]
