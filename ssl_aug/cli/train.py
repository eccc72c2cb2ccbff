"""`ssl-aug train RECIPE [key=value ...]`: train one recipe (torchrun-aware)."""

from __future__ import annotations

import json
from pathlib import Path

from ssl_aug.cli._common import add_command
from ssl_aug.errors import SslAugError


def validate_before_data(cfg) -> None:
    """Check the [augment] and [method] tables before any data is loaded or an image folder is decoded
    (a typo should not cost a cache build)."""
    from ssl_aug.augment.recipe import views_of
    from ssl_aug.methods import method_options

    views_of(cfg).build()
    from ssl_aug.workflows.sizes import check_sizes

    check_sizes(cfg, None)  # the checks that need no data (view counts, crop sizes)
    allowed = method_options(cfg.method.get("name", "simclr"))
    unknown = sorted(set(cfg.method) - set(allowed) - {"name"})
    if unknown:
        raise SslAugError(f"unknown option(s) {', '.join(unknown)} for method {cfg.method.get('name')!r}: "
                          f"allowed are {', '.join(allowed)}")


def run(args) -> int:
    from ssl_aug import distributed as dist
    from ssl_aug.config import load_recipe
    from ssl_aug.workflows.experiment import run_experiment

    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"output_dir={json.dumps(args.output_dir)}")
    from ssl_aug.workflows.ablation.spec import is_ablation_spec
    from ssl_aug.config import read_toml, resolve_recipe_path

    if is_ablation_spec(read_toml(resolve_recipe_path(args.recipe))):
        raise SslAugError(f"{args.recipe} is an ablation spec, not a training recipe: use ssl-aug ablate {args.recipe}")
    cfg = load_recipe(args.recipe, overrides)
    out = Path(cfg.output_dir)
    if out.exists() and not out.is_dir():
        raise SslAugError(f"output_dir {out} is a file, not a folder; give a folder for the run (--output-dir DIR)")
    validate_before_data(cfg)
    dist.init_from_env(cfg.device)  # nccl only for a CUDA recipe; gloo for cpu
    main_process = dist.is_main()
    try:
        results = run_experiment(cfg, resume=args.resume, progress=not args.no_progress)
    finally:
        dist.cleanup()
    if main_process:
        print(json.dumps(results, indent=2))
    return 0


def register(sub) -> None:
    p = add_command(sub, "train", run, help="train one recipe: ssl-aug train RECIPE [key=value ...]")
    p.add_argument("recipe", help="a TOML recipe file or a shipped recipe name (quickstart, simclr_cifar10, ...)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.epochs=5 augment.color_jitter.p=0")
    p.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")
    p.add_argument("--output-dir", default=None)
    p.add_argument("--no-progress", action="store_true")
