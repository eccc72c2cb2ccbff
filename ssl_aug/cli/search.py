"""`ssl-aug search SPEC [key=value ...]`: augmentation policy search (Optuna; optional Ray workers)."""

from __future__ import annotations

import json

from ssl_aug.cli._common import add_command


def run(args) -> int:
    from ssl_aug.workflows.search import run_search

    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"output_dir={json.dumps(args.output_dir)}")
    if args.trials:
        overrides.append(f"trials={args.trials}")
    if args.compare_seeds is not None:
        overrides.append(f"compare_seeds={args.compare_seeds}")
    run_search(args.spec, overrides, launcher=args.launcher, workers=args.workers, address=args.address,
               gpus_per_worker=args.gpus_per_worker, progress=not args.no_progress, report_only=args.report_only)
    return 0


def register(sub) -> None:
    p = add_command(sub, "search", run,
                    help="search augmentation policies: ssl-aug search SPEC.toml [key=value ...] (needs ssl_aug[search])")
    p.add_argument("spec", help="a search TOML (ssl_aug/recipes/search_*.toml) or its shipped name")
    p.add_argument("overrides", nargs="*", help="overrides of the spec, e.g. trials=10 base.train.epochs=2")
    p.add_argument("--trials", type=int, default=0, help="finished trials to reach (overrides the spec)")
    p.add_argument("--output-dir", default=None, help="the search directory (study.db, trials/, report)")
    p.add_argument("--launcher", choices=("local", "ray"), default="local",
                   help="local: worker processes on this machine; ray: one Ray task per worker (ssl_aug[ray])")
    p.add_argument("--workers", type=int, default=1, help="parallel workers, each running one trial at a time")
    p.add_argument("--address", default=None, help="Ray cluster address host:port (with --launcher ray)")
    p.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs Ray gives each worker (its own device)")
    p.add_argument("--compare-seeds", type=int, default=None,
                   help="seeds for the best policy vs the base recipe on the test split (0 = skip)")
    p.add_argument("--report-only", action="store_true", help="rewrite the report of an existing search")
    p.add_argument("--no-progress", action="store_true")
