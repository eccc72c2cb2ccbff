"""`ssl-aug ablate SPEC [key=value ...]`: run an ablation grid and write its report."""

from __future__ import annotations

import json

from ssl_aug.cli._common import add_command


def run(args) -> int:
    from ssl_aug.workflows.ablation import run_ablation

    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"output_dir={json.dumps(args.output_dir)}")
    if args.seeds is not None:
        overrides.append(f"seeds={args.seeds}")
    run_ablation(args.spec, overrides=overrides, progress=not args.no_progress, dry_run=args.dry_run,
                 rerun_changed=args.rerun_changed, cells=args.cells, launcher=args.launcher, workers=args.workers,
                 address=args.address, gpus_per_task=args.gpus_per_cell)
    return 0


def register(sub) -> None:
    p = add_command(sub, "ablate", run, help="run an ablation grid: ssl-aug ablate SPEC.toml [key=value ...]")
    p.add_argument("spec", help="an ablation TOML (ssl_aug/recipes/ablate_*.toml) or its shipped name")
    p.add_argument("overrides", nargs="*", help="overrides of the spec, e.g. base.train.epochs=2 seeds=3")
    p.add_argument("--seeds", type=int, default=None, help="seeds per cell (overrides the spec)")
    p.add_argument("--output-dir", default=None)
    p.add_argument("--cells", type=lambda text: [c.strip() for c in text.split(",") if c.strip()], default=None,
                   metavar="NAME[,NAME...]", help="run only these cells; the report covers every finished run")
    p.add_argument("--dry-run", action="store_true", help="list the runs without training")
    p.add_argument("--rerun-changed", action="store_true",
                   help="rerun cells whose folder holds a run of another config (the old run moves to *.old)")
    p.add_argument("--launcher", choices=("local", "ray"), default="local",
                   help="local: here (--workers N processes); ray: one Ray task per cell (ssl_aug[ray])")
    p.add_argument("--workers", type=int, default=1, help="cells run in parallel with the local launcher")
    p.add_argument("--address", default=None, help="Ray cluster address host:port (with --launcher ray)")
    p.add_argument("--gpus-per-cell", type=float, default=0.0, help="GPUs Ray gives each cell (its own device)")
    p.add_argument("--no-progress", action="store_true")
