"""`ssl-aug train RECIPE [key=value ...]`: train one recipe (torchrun-aware). RECIPE may be a run folder
or its config.toml / config.json: the run's own recipe (with --resume: continue it)."""

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
    from ssl_aug.recipe_checks import check_option_types

    check_option_types("method", {k: v for k, v in cfg.method.items() if k != "name"}, allowed)


def resolved_config(recipe: str, overrides: list[str], output_dir: str | None = None):
    """The Config `ssl-aug train RECIPE overrides` trains: a shipped recipe, a TOML file or a run folder
    (its own recipe, output_dir = the folder), with absolute paths."""
    from ssl_aug.workflows.ablation.spec import is_ablation_spec
    from ssl_aug.config import apply_overrides, config_from_dict
    from ssl_aug.train.run_folder import absolute_paths, read_recipe_source

    data, _ = read_recipe_source(recipe)
    if is_ablation_spec(data):
        raise SslAugError(f"{recipe} is an ablation spec, not a training recipe: use ssl-aug ablate {recipe}")
    overrides = list(overrides) + ([f"output_dir={json.dumps(output_dir)}"] if output_dir else [])
    cfg = config_from_dict(apply_overrides(data, overrides))
    absolute_paths(cfg)
    return cfg


def results_table(results: dict, cfg) -> str:
    """The end-of-training summary for people (eval.json keeps every number)."""
    rows = [("training", f"{results['steps']} steps, {results['epochs']} epochs in {results['train_time_s']:.0f} s"),
            ("final loss", "-" if results.get("final_loss") is None else f"{results['final_loss']:.4f}")]
    names = {"knn_top1": f"kNN top-1 (k={cfg.eval.knn_k})", "knn_top5": f"kNN top-5 (k={cfg.eval.knn_k})",
             "linear_top1": "linear probe top-1", "linear_top5": "linear probe top-5",
             "tta_top1_tta": "TTA top-1", "knn_worst_group_acc": "kNN worst group"}
    for key, label in names.items():
        if isinstance(results.get(key), (int, float)):
            rows.append((label, f"{100 * results[key]:.2f} %"))
    if isinstance(results.get("linear_ece"), (int, float)):
        rows.append(("linear probe ECE", f"{results['linear_ece']:.4f}"))
    rows += [(f"invariance: {key[len('invariance_'):]}", f"{value:.3f}") for key, value in results.items()
             if key.startswith("invariance_") and isinstance(value, (int, float))]
    if "eval_time_s" in results:
        rows.append(("evaluation", f"{results['eval_time_s']:.0f} s"))
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"  {label:<{width}}  {value}" for label, value in rows)


def run(args) -> int:
    from ssl_aug import distributed as dist
    from ssl_aug.workflows.experiment import run_experiment

    cfg = resolved_config(args.recipe, args.overrides, args.output_dir)
    out = Path(cfg.output_dir)
    if out.exists() and not out.is_dir():
        raise SslAugError(f"output_dir {out} is a file, not a folder; give a folder for the run (--output-dir DIR)")
    validate_before_data(cfg)
    dist.init_from_env(cfg.device)  # nccl only for a CUDA recipe; gloo for cpu
    main_process = dist.is_main()
    if main_process:
        print(f"run directory: {out}", flush=True)
    try:
        results = run_experiment(cfg, resume=args.resume, progress=not args.no_progress)
    finally:
        dist.cleanup()
    if main_process:
        print(f"results (all numbers in {out / 'eval.json'}):\n{results_table(results, cfg)}")
        print(f"run directory: {out}  (evaluate: ssl-aug eval {out}; export: ssl-aug export {out} --out DIR; "
              f"continue: ssl-aug train {out} --resume)")
    return 0


def register(sub) -> None:
    p = add_command(sub, "train", run, help="train one recipe: ssl-aug train RECIPE [key=value ...]")
    p.add_argument("recipe", help="a TOML recipe file, a shipped recipe name (quickstart, simclr_cifar10, ...) or a "
                                  "run folder (its own recipe; with --resume continue it)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.epochs=5 augment.color_jitter.p=0")
    p.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")
    p.add_argument("--output-dir", default=None)
    p.add_argument("--no-progress", action="store_true")
