"""`ssl-aug` command line (also `python -m ssl_aug`).

One module per command in this package, each with ``register(sub)`` adding its parser (arguments,
help, ``func``); a new command is one module plus its name in the `COMMANDS` registration loop. Every user error is printed
as one line `ssl-aug: error: ...` (exit code 2); an unknown flag names the sub-command's --help.
"""

from __future__ import annotations

import argparse
import builtins  # `list` in this package's namespace is the `ssl-aug list` command module
import importlib
import os
import sys

# OpenMP threads that wait for work sleep instead of spinning: on a machine shared with other jobs a
# spinning thread burns the core another process needs (set before torch is imported; the caller's value wins).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from ssl_aug.errors import SslAugError, one_line_parser
from ssl_aug.registry import Registry

COMMANDS = Registry("command")  # name -> its module; the order `ssl-aug --help` lists them in
for _name in ("quickstart", "train", "show", "views", "eval", "finetune", "ablate", "report", "search", "export", "bench",
              "data", "list"):
    COMMANDS.register(_name, f"ssl_aug.cli.{_name}")

__all__ = ["main", "build_parser", "COMMANDS"]


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every registered command."""
    from ssl_aug._version import __version__

    parser = one_line_parser(prog="ssl-aug", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"ssl_aug {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=type(parser))
    for module in COMMANDS.values():
        importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from ssl_aug.cli._common import find_passthrough

    parser = build_parser()
    argv = builtins.list(sys.argv[1:] if argv is None else argv)
    handed_over = find_passthrough(argv)
    if handed_over is None:
        args, extra = parser.parse_known_args(argv)
        if extra and isinstance(getattr(args, "overrides", None), builtins.list) \
                and not any(e.startswith("-") for e in extra):  # key=value after a flag
            args.overrides += extra
            extra = []
        if extra:  # report on the sub-command's own parser, so the message points to its --help
            getattr(args, "parser", parser).error(f"unrecognized arguments: {' '.join(extra)}")
        if not getattr(args, "func", None):
            parser.print_help()
            return 0
    from ssl_aug.train.signals import EXIT_CODES, PhaseInterrupted, interrupt_on_signal

    # training loops (train, finetune) and workflows (ablate, search) take over and print their own stop line
    try:
        with interrupt_on_signal():
            if handed_over is not None:
                function, rest = handed_over
                return int(function(rest) or 0)
            return int(args.func(args) or 0)
    except PhaseInterrupted as stop:
        _ignore_further_signals()
        import signal

        print(f"ssl-aug: {signal.Signals(stop.signum).name}: stopped; every file written so far is complete (writes "
              "are atomic, nothing partial is left); run the same command again to finish", file=sys.stderr)
        return EXIT_CODES.get(stop.signum, 128 + stop.signum)
    except SslAugError as exc:
        print(f"ssl-aug: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        _ignore_further_signals()
        print("ssl-aug: interrupted", file=sys.stderr)
        return 130
    except SystemExit as exc:
        if exc.code in (130, 143):  # stopped on a signal (TrainingInterrupted), its one line printed
            _ignore_further_signals()
        raise


def _ignore_further_signals() -> None:
    """After a stop on a signal, another Ctrl-C (a quick double press) must not interrupt the interpreter's
    shutdown (atexit callbacks would print 'Exception ignored ...' tracebacks)."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)


if __name__ == "__main__":
    sys.exit(main())
