"""Helpers shared by the command modules: leaf parsers that know themselves, module pass-through."""

from __future__ import annotations

import argparse
import importlib


def add_command(sub, name: str, func, **kwargs) -> argparse.ArgumentParser:
    """sub.add_parser(name, **kwargs) whose parsed namespace carries `func` and the parser itself
    (main() reports unknown flags on it, so the message names this command's --help)."""
    parser = sub.add_parser(name, **kwargs)
    parser.set_defaults(func=func, parser=parser)
    return parser


PASSTHROUGH: dict[tuple[str, ...], tuple[str, str]] = {}  # command path -> (module, function(argv))


def passthrough(sub, name: str, module: str, function: str, help: str) -> argparse.ArgumentParser:
    """A command whose arguments (and --help) are parsed by `module.function(argv)`: main() hands it
    everything after the command path (argparse's REMAINDER would drop a leading --help)."""
    path = tuple(sub._prog_prefix.split()[1:]) + (name,)  # e.g. ("bench", "views")
    PASSTHROUGH[path] = (module, function)

    def run(args) -> int:
        return getattr(importlib.import_module(module), function)(args.rest) or 0

    parser = add_command(sub, name, run, add_help=False, help=help)
    parser.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


def find_passthrough(argv: list[str]):
    """(function, its argv) when `argv` starts with a pass-through command path, else None."""
    for path, (module, function) in PASSTHROUGH.items():
        if tuple(argv[:len(path)]) == path:
            return getattr(importlib.import_module(module), function), argv[len(path):]
    return None
