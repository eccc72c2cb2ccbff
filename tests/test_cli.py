"""The command line: every command and sub-command answers --help with its usage (exit 0), an unknown
flag names that command's --help, and a new command is one module plus one line in COMMANDS."""

from __future__ import annotations

import argparse
import importlib

import pytest

from ssl_aug.cli import COMMANDS, build_parser, main
from ssl_aug.cli._common import PASSTHROUGH


def _commands(parser: argparse.ArgumentParser, prefix=()) -> list[tuple[str, ...]]:
    """Every command path ('train',), ('bench', 'views'), ... reachable from `parser`."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.append(prefix + (name,))
                found += _commands(sub, prefix + (name,))
    return found


ALL = _commands(build_parser())


def _run(argv, capsys):
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_every_command_is_listed():
    names = {path[0] for path in ALL}
    assert names == {m.rsplit(".", 1)[1] for m in COMMANDS.values()}
    assert {("bench", "views"), ("bench", "knn"), ("bench", "train"), ("data", "pack"), ("data", "info"),
            ("export",)} <= set(ALL)


@pytest.mark.parametrize("path", ALL, ids=" ".join)
def test_help_prints_usage_and_exits_0(path, capsys):
    code, out, err = _run([*path, "--help"], capsys)
    assert code in (0, None), (code, err)
    assert "usage:" in out.lower() and "--help" in out, out
    assert "error" not in err.lower(), err


LEAVES = [p for p in ALL if not any(q[:len(p)] == p and len(q) > len(p) for q in ALL)]


def _required_args(path) -> list[str]:
    """Dummy values for the leaf command's required positionals and required options, so that the
    unknown flag is what the parser trips over."""
    parser = build_parser()
    for name in path:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    args = []
    for action in parser._actions:
        if not action.option_strings and action.nargs in (None, "+"):
            args.append("x")
        elif action.option_strings and action.required:
            args += [action.option_strings[0], "x"]
    return args


@pytest.mark.parametrize("path", [p for p in LEAVES if p not in PASSTHROUGH], ids=" ".join)  # those parse their own
def test_unknown_flag_points_to_the_subcommands_help(path, capsys):
    code, out, err = _run([*path, *_required_args(path), "--no-such-flag"], capsys)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ssl-aug: error: "), err
    assert "--no-such-flag" in lines[0] and f"see ssl-aug {' '.join(path)} --help" in lines[0]


def test_each_command_module_registers_one_parser():
    for name in COMMANDS.values():
        module = importlib.import_module(name)
        assert callable(module.register) and module.__doc__, name


def test_no_command_prints_help(capsys):
    code, out, _ = _run([], capsys)
    assert code == 0 and "COMMAND" in out


def test_pack_unknown_flag_points_to_its_help(capsys):
    code, _, err = _run(["data", "pack", "src", "dst", "--no-such-flag"], capsys)
    assert code == 2 and err.count("\n") == 1 and "see ssl-aug data pack --help" in err
