"""What `ssl-aug eval` runs: the command line's flags and the run's own eval keys -> the evaluators on the
encoder's data, a printed report and a JSON file."""

from __future__ import annotations

import json
from pathlib import Path

from ssl_aug.device import resolve_device
from ssl_aug.errors import SslAugError
from ssl_aug.evaluation import build_evaluator, evaluate_encoder, format_report
from ssl_aug.io import atomic_write_json
from ssl_aug.workflows.evaluate_encoder import _subset, load_eval_data, resolve_encoder


def run_eval_defaults(args, run_eval: dict) -> None:
    """Flags left unset take the run's own eval keys (eval.knn_k, knn_temperature, knn_index, knn_nlist,
    knn_nprobe), then the built-in defaults (k 200, T 0.1, flat, automatic, 16)."""
    for flag, key, default in (("k", "knn_k", 200), ("temperature", "knn_temperature", 0.1),
                               ("knn_index", "knn_index", "flat"), ("nlist", "knn_nlist", 0),
                               ("nprobe", "knn_nprobe", 16)):
        if getattr(args, flag, None) is None:
            setattr(args, flag, run_eval.get(key, default))
    if isinstance(args.k, int):
        args.k = [args.k]


def _output_path(args) -> Path:
    if args.json:
        out = Path(args.json)
    elif args.encoder.startswith("random:"):
        out = Path(f"eval_{args.encoder.replace(':', '_')}.json")
    else:
        base = Path(args.encoder)
        out = (base if base.is_dir() else base.parent) / "eval_cli.json"
    if out.is_dir():
        raise SslAugError(f"--json {out} is a folder; give a file path such as {out / 'eval.json'}")
    return out


def _knn_kw(args) -> dict:
    """kNN search options of the command line (--knn-index, --nlist, --nprobe; unset: flat, automatic, 16)."""
    nprobe = 16 if getattr(args, "nprobe", None) is None else args.nprobe
    if nprobe < 1:
        raise SslAugError(f"--nprobe {nprobe} is not allowed: the IVF index needs nprobe >= 1")
    return {"index": getattr(args, "knn_index", None) or "flat", "nlist": getattr(args, "nlist", None) or None,
            "nprobe": nprobe}


def _robustness_evaluator(args, data: dict) -> list:
    """--robustness: [the robustness evaluator] with the run's eval.robustness keys, --corruption / --severity
    on top (checked: one line each); [] without it (or when --evaluator robustness already asks for it)."""
    if not getattr(args, "robustness", False):
        if getattr(args, "corruption", None) or getattr(args, "severity", None):
            raise SslAugError("--corruption / --severity choose what --robustness evaluates; add --robustness")
        return []
    if "robustness" in getattr(args, "evaluator", []):
        return []
    table = data["evaluators"].get("robustness", True)
    table = dict(table) if isinstance(table, dict) else {}
    if args.corruption:
        table["corruptions"] = list(args.corruption)
    if args.severity:
        table["severities"] = list(args.severity)
    return [build_evaluator("robustness", table)]


def eval_command(args) -> int:
    device = resolve_device(args.device)
    out = _output_path(args)  # checked before any work
    backbone, mean, std, data, label = resolve_encoder(args.encoder, device)
    run_eval_defaults(args, data["eval"])
    (train, test), data_name, how, groups = load_eval_data(data, args.data, args.root, args.split, args.test_split,
                                                                with_groups=True)
    train = _subset(*train, args.train_subset, "--train-subset")
    *test, groups["test_groups"] = _subset(*test, args.test_subset, "--test-subset", groups["test_groups"], True)
    test = tuple(test)
    fine = getattr(args, "finetune", False)
    ops = getattr(args, "invariance_op", []) or []
    if ops:
        from ssl_aug.evaluation.invariance import op_transforms

        op_transforms(ops)  # unknown names: one line before any work
    args.invariance = args.invariance or bool(ops)
    extra = [build_evaluator(name, data["evaluators"].get(name, True)) for name in getattr(args, "evaluator", [])]
    extra += _robustness_evaluator(args, data)   # unknown corruption / severity: one line before any work
    knn = args.knn or not (args.linear or args.tta or args.invariance or fine or extra)
    if min(args.k) < 1:
        raise SslAugError(f"--k {min(args.k)} is not allowed: kNN needs k >= 1 neighbours")
    if knn and max(args.k) > len(train[1]):
        raise SslAugError(f"--k {max(args.k)} is larger than the kNN bank ({len(train[1])} images); use at most "
                          f"{len(train[1])}")
    print(f"evaluating on {data_name}: {how}")
    if mean is None:  # random baseline: normalise with the training set's own statistics
        pixels = train[0][:5000].float().div_(255)
        mean = pixels.mean(dim=(0, 2, 3)).tolist()
        std = pixels.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()
    results = {} if not (knn or args.linear or args.tta or args.invariance or extra) else evaluate_encoder(
        backbone, mean, std, train, test, knn=knn, linear=args.linear or args.tta, tta=args.tta,
        invariance=args.invariance, ks=tuple(args.k), temperature=args.temperature, progress=not args.no_progress,
        knn_kw=_knn_kw(args), invariance_ops=ops, evaluators=extra, run_dir=out.parent, **groups)
    if fine:  # default fine-tuning settings (ssl-aug finetune sets them all); TTA with --tta
        from ssl_aug.evaluation.finetune import finetune

        results["finetune"] = finetune(backbone, mean, std, train, test, {"tta": args.tta},
                                       run_dir=out.parent / f"{out.stem}_finetune", progress=not args.no_progress)
    results = {"encoder": label, "data": data_name, "split": how, **results}
    print(format_report(results))
    atomic_write_json(out, json.loads(json.dumps(results, default=float)))
    print(f"wrote {out}")
    return 0
