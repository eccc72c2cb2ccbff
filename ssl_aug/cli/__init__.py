"""`ssl-aug` command line (also `python -m ssl_aug`).

One module per command in this package, each with ``register(sub)`` adding its parser (arguments,
help, ``func``); a new command is one module plus one line in `COMMANDS`. Every user error is printed
as one line `ssl-aug: error: ...` (exit code 2); an unknown flag names the sub-command's --help.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# OpenMP threads that wait for work sleep instead of spinning: on a machine shared with other jobs a
# spinning thread burns the core another process needs (set before torch is imported; the caller's value wins).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from ssl_aug.errors import SslAugError, one_line_parser

COMMANDS = (  # the order `ssl-aug --help` lists them in
    "ssl_aug.cli.quickstart",
    "ssl_aug.cli.train",
    "ssl_aug.cli.show",
    "ssl_aug.cli.views",
    "ssl_aug.cli.eval",
    "ssl_aug.cli.finetune",
    "ssl_aug.cli.ablate",
    "ssl_aug.cli.search",
    "ssl_aug.cli.export",
    "ssl_aug.cli.bench",
    "ssl_aug.cli.data",
)

__all__ = ["main", "build_parser", "COMMANDS"]


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every registered command."""
    from ssl_aug._version import __version__

    parser = one_line_parser(prog="ssl-aug", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"ssl_aug {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=type(parser))
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from ssl_aug.cli._common import find_passthrough

    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    handed_over = find_passthrough(argv)
    if handed_over is None:
        args, extra = parser.parse_known_args(argv)
        if extra and isinstance(getattr(args, "overrides", None), list) \
                and not any(e.startswith("-") for e in extra):  # key=value after a flag
            args.overrides += extra
            extra = []
        if extra:  # report on the sub-command's own parser, so the message points to its --help
            getattr(args, "parser", parser).error(f"unrecognized arguments: {' '.join(extra)}")
        if not getattr(args, "func", None):
            parser.print_help()
            return 0
    try:
        if handed_over is not None:
            function, rest = handed_over
            return int(function(rest) or 0)
        return int(args.func(args) or 0)
    except SslAugError as exc:
        print(f"ssl-aug: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ssl-aug: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
