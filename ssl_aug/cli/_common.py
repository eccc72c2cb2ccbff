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


def passthrough(sub, name: str, module: str, function: str, help: str) -> argparse.ArgumentParser:
    """A command whose arguments (and --help) are parsed by `module.function(argv)`."""
    def run(args) -> int:
        return getattr(importlib.import_module(module), function)(args.rest) or 0

    parser = add_command(sub, name, run, add_help=False, help=help)
    parser.add_argument("rest", nargs=argparse.REMAINDER)
    return parser
