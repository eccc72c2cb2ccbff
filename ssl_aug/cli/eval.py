"""`ssl-aug eval ENCODER`: kNN / linear / TTA / invariance evaluation of a run, checkpoint or export."""

from __future__ import annotations

from ssl_aug.cli._common import add_command


def _count(text: str) -> int:
    """argparse type: an integer >= 0."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be >= 0 (0 = all)")
    return value


def run(args) -> int:
    from ssl_aug.cli.eval_run import eval_command  # imported on use: `ssl-aug --help` stays fast

    return eval_command(args)


def register(sub) -> None:
    p = add_command(sub, "eval", run,
                    help="evaluate an encoder (run dir, checkpoint, export dir or random:BACKBONE)")
    p.add_argument("encoder", help="a run directory, a checkpoint .pt, an export directory, or random:BACKBONE")
    p.add_argument("--data", default=None, help="data set name (default: the one the encoder was trained on)")
    p.add_argument("--root", default=None, help="data root (default: the run's data.root, then $SSL_AUG_DATA, "
                                                  "then ~/.cache/ssl_aug)")
    p.add_argument("--split", default=None, help="bank / training split (default: the run's data.split)")
    p.add_argument("--test-split", default=None,
                   help="query split (default: the run's eval.test_split; the training split itself means a "
                        "seeded stratified 20%% hold-out)")
    p.add_argument("--knn", action="store_true", help="weighted kNN (faiss); the default when nothing is chosen")
    p.add_argument("--linear", action="store_true", help="linear probe on frozen features")
    p.add_argument("--tta", action="store_true", help="linear probe with 10-crop test-time augmentation")
    p.add_argument("--invariance", action="store_true", help="invariance probe per transform family")
    p.add_argument("--invariance-op", action="append", default=[], metavar="OP",
                   help="also probe this registered or kornia.augmentation op by name (repeatable; implies "
                        "--invariance), e.g. --invariance-op blur --invariance-op RandomErasing")
    p.add_argument("--evaluator", action="append", default=[], metavar="NAME",
                   help="also run this registered evaluator (repeatable; `ssl-aug list evaluators`), with the run's "
                        "own eval.NAME keys when it has them")
    p.add_argument("--robustness", action="store_true",
                   help="evaluator robustness: kNN and linear accuracy under 15 common corruptions x 5 "
                        "severities, drop from clean, mCE relative to the random-init encoder")
    p.add_argument("--corruption", action="append", default=[], metavar="NAME",
                   help="with --robustness: only this corruption (repeatable), e.g. --corruption fog")
    p.add_argument("--severity", action="append", type=int, default=[], metavar="S",
                   help="with --robustness: only this severity 1-5 (repeatable)")
    p.add_argument("--finetune", action="store_true", help="supervised fine-tuning with default settings (with "
                                                           "--tta: also 10-crop TTA); see `ssl-aug finetune` for all")
    p.add_argument("--k", type=int, nargs="+", default=None,
                   help="kNN neighbours (several allowed; default: the run's eval.knn_k, else 200)")
    p.add_argument("--temperature", type=float, default=None,
                   help="kNN temperature (default: the run's eval.knn_temperature, else 0.1)")
    p.add_argument("--knn-index", choices=("flat", "ivf"), default=None,
                   help="flat: exact search; ivf: faiss IVF, approximate (its agreement with exact search is "
                        "printed); default: the run's eval.knn_index, else flat")
    p.add_argument("--nlist", type=_count, default=None,
                   help="IVF lists (0 = about 4*sqrt(bank size); default: the run's eval.knn_nlist)")
    p.add_argument("--nprobe", type=_count, default=None,
                   help="IVF lists searched per query (default: the run's eval.knn_nprobe, else 16)")
    p.add_argument("--train-subset", type=_count, default=0, help="use N training images (0 = all)")
    p.add_argument("--test-subset", type=_count, default=0, help="use N test images (0 = all)")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", default=None, help="write the results here (default: next to the encoder)")
    p.add_argument("--no-progress", action="store_true")
