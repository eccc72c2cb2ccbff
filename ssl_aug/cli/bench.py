"""`ssl-aug bench views|knn|train|ops`: benchmarks (each parses its own options; --help lists them)."""

from __future__ import annotations

from ssl_aug.cli._common import passthrough

BENCHES = (("views", "ssl_aug.benchmarks.views"), ("knn", "ssl_aug.benchmarks.knn"),
           ("train", "ssl_aug.benchmarks.train"), ("ops", "ssl_aug.benchmarks.ops"))


def register(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks: views | knn | train | ops (print a table, update BENCHMARKS.md)")
    bench = p.add_subparsers(dest="bench", metavar="BENCH", required=True, parser_class=type(p))
    for name, module in BENCHES:
        passthrough(bench, name, module, "main", help=f"the {name} benchmark (--help for its options)")
