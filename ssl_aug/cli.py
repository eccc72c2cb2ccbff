"""`ssl-aug` command line (also `python -m ssl_aug`).

Sub-commands: quickstart, train, eval, ablate, export, bench, data. Every user error is printed as
one line `ssl-aug: error: ...` (exit code 2); nothing prints a raw traceback for bad input.
"""

from __future__ import annotations

import argparse
import json
import sys

from ssl_aug.errors import SslAugError, one_line_parser


def _cmd_train(args) -> int:
    from ssl_aug import distributed as dist
    from ssl_aug.config import load_recipe
    from ssl_aug.experiment import run_experiment

    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"output_dir={json.dumps(args.output_dir)}")
    cfg = load_recipe(args.recipe, overrides)
    dist.init_from_env()
    main_process = dist.is_main()
    try:
        results = run_experiment(cfg, resume=args.resume, progress=not args.no_progress)
    finally:
        dist.cleanup()
    if main_process:
        print(json.dumps(results, indent=2))
    return 0


def _cmd_quickstart(args) -> int:
    from ssl_aug.ablation import run_ablation

    spec = args.spec or "ablate_quickstart"
    overrides = [f"base.output_dir={json.dumps(args.output_dir)}"] if args.output_dir else []
    run_ablation(spec, overrides=overrides, progress=not args.no_progress)
    return 0


def _cmd_ablate(args) -> int:
    from ssl_aug.ablation import run_ablation

    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"output_dir={json.dumps(args.output_dir)}")
    if args.seeds:
        overrides.append(f"seeds={args.seeds}")
    run_ablation(args.spec, overrides=overrides, progress=not args.no_progress, dry_run=args.dry_run)
    return 0


def _cmd_eval(args) -> int:
    from ssl_aug.evaluate_encoder import eval_command

    return eval_command(args)


def _passthrough(module: str, function: str):
    def run(args) -> int:
        import importlib

        return getattr(importlib.import_module(module), function)(args.rest) or 0

    return run


def _cmd_data_info(args) -> int:
    import torch

    from ssl_aug.data import load_dataset

    ds = load_dataset(args.name, split=args.split, root=args.root, download=args.download)
    counts = torch.bincount(ds.labels[ds.labels >= 0], minlength=len(ds.classes)).tolist()
    print(f"{ds.name} [{args.split}]: {len(ds.labels)} images, shape {tuple(ds.images.shape[1:])}, "
          f"{ds.images.dtype}, {len(ds.classes)} classes")
    for name, count in zip(ds.classes, counts):
        print(f"  {name:>16}: {count}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from ssl_aug import __version__

    parser = one_line_parser(prog="ssl-aug", description=__doc__.splitlines()[0])
    OneLineParser = type(parser)
    parser.add_argument("--version", action="version", version=f"ssl_aug {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)

    p = sub.add_parser("quickstart", help="train on the embedded data set with and without colour distortion, "
                                          "kNN-evaluate and probe invariances (offline, a few CPU minutes)")
    p.add_argument("--output-dir", default=None, help="where the runs go (default runs/quickstart)")
    p.add_argument("--spec", default=None, help=argparse.SUPPRESS)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_quickstart)

    p = sub.add_parser("train", help="train one recipe: ssl-aug train RECIPE [key=value ...]")
    p.add_argument("recipe", help="a TOML recipe file or a shipped recipe name (quickstart, simclr_cifar10, ...)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.epochs=5 augment.color_jitter.p=0")
    p.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")
    p.add_argument("--output-dir", default=None)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="evaluate an encoder (run dir, checkpoint, export dir or random:BACKBONE)")
    p.add_argument("encoder", help="a run directory, a checkpoint .pt, an export directory, or random:BACKBONE")
    p.add_argument("--data", default=None, help="data set name (default: the one the encoder was trained on)")
    p.add_argument("--root", default=None, help="data root (default $SSL_AUG_DATA, then ~/.cache/ssl_aug)")
    p.add_argument("--knn", action="store_true", help="weighted kNN (faiss); the default when nothing is chosen")
    p.add_argument("--linear", action="store_true", help="linear probe on frozen features")
    p.add_argument("--tta", action="store_true", help="linear probe with 10-crop test-time augmentation")
    p.add_argument("--invariance", action="store_true", help="invariance probe per transform family")
    p.add_argument("--k", type=int, nargs="+", default=[200], help="kNN neighbours (several allowed)")
    p.add_argument("--temperature", type=float, default=0.1)
    p.add_argument("--train-subset", type=int, default=0, help="use N training images (0 = all)")
    p.add_argument("--test-subset", type=int, default=0, help="use N test images (0 = all)")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", default=None, help="write the results here (default: next to the encoder)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("ablate", help="run an ablation grid: ssl-aug ablate SPEC.toml [key=value ...]")
    p.add_argument("spec", help="an ablation TOML (ssl_aug/recipes/ablate_*.toml) or its shipped name")
    p.add_argument("overrides", nargs="*", help="overrides of the spec, e.g. base.train.epochs=2 seeds=3")
    p.add_argument("--seeds", type=int, default=0, help="seeds per cell (overrides the spec)")
    p.add_argument("--output-dir", default=None)
    p.add_argument("--dry-run", action="store_true", help="list the runs without training")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_ablate)

    p = sub.add_parser("export", help="export a trained encoder (torchvision state_dict, TorchScript, metadata)",
                       add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=_passthrough("ssl_aug.export", "export_main"))

    p = sub.add_parser("bench", help="benchmarks: views | knn | train (print a table, update BENCHMARKS.md)")
    bench = p.add_subparsers(dest="bench", metavar="BENCH", required=True, parser_class=OneLineParser)
    for name, module in (("views", "ssl_aug.benchmarks.views"), ("knn", "ssl_aug.benchmarks.knn"),
                         ("train", "ssl_aug.benchmarks.train")):
        b = bench.add_parser(name, add_help=False, help=f"the {name} benchmark (--help for its options)")
        b.add_argument("rest", nargs=argparse.REMAINDER)
        b.set_defaults(func=_passthrough(module, "main"))

    p = sub.add_parser("data", help="data tools: pack an image folder, inspect a data set")
    data = p.add_subparsers(dest="data", metavar="ACTION", required=True, parser_class=OneLineParser)
    b = data.add_parser("pack", add_help=False, help="decode an image folder once into uint8 npz shards")
    b.add_argument("rest", nargs=argparse.REMAINDER)
    b.set_defaults(func=_passthrough("ssl_aug.data.imagefolder", "pack_main"))
    b = data.add_parser("info", help="load a data set and print its size and class counts")
    b.add_argument("name")
    b.add_argument("--split", default="train")
    b.add_argument("--root", default=None)
    b.add_argument("--download", action="store_true")
    b.set_defaults(func=_cmd_data_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except SslAugError as exc:
        print(f"ssl-aug: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ssl-aug: interrupted; the last checkpoint is kept (resume with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
