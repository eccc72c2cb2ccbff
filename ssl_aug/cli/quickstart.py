"""`ssl-aug quickstart`: the colour ablation on the embedded data set (offline, a few CPU minutes)."""

from __future__ import annotations

import argparse
import json

from ssl_aug.cli._common import add_command


def run(args) -> int:
    from ssl_aug.workflows.ablation import run_ablation

    spec = args.spec or "ablate_quickstart"
    overrides = [f"output_dir={json.dumps(args.output_dir)}"] if args.output_dir else []
    run_ablation(spec, overrides=overrides, progress=not args.no_progress)
    return 0


def register(sub) -> None:
    p = add_command(sub, "quickstart", run,
                    help="train on the embedded data set with and without colour distortion, "
                         "kNN-evaluate and probe invariances (offline, a few CPU minutes)")
    p.add_argument("--output-dir", default=None, help="where the runs go (default runs/quickstart)")
    p.add_argument("--spec", default=None, help=argparse.SUPPRESS)
    p.add_argument("--no-progress", action="store_true")
