"""`ssl-aug data gate CANDIDATES --encoder ENC --reference DATA --min-confidence C --out DIR`: quality gating
of extra images (see ssl_aug.workflows.gate)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ssl_aug.errors import SslAugError, one_line_parser
from ssl_aug.workflows.gate import check_confidence, gate, load_candidates


def gate_main(argv: list[str] | None = None) -> int:
    """`ssl-aug data gate CANDIDATES --encoder ENC --reference DATA --min-confidence C --out DIR` -> exit code."""
    ap = one_line_parser(prog="ssl-aug data gate", description="Keep the candidate images a classifier on the "
                         "encoder's features, trained on the real reference data, labels confidently and consistently.")
    ap.add_argument("candidates", metavar="CANDIDATES", help="folder of npz shards, an .npz file or an image folder")
    ap.add_argument("--encoder", required=True, help="run directory, checkpoint .pt or export directory")
    ap.add_argument("--reference", required=True, help="real labelled data: a data set name (embedded, cifar10, ...) "
                    "or a folder of npz shards")
    ap.add_argument("--reference-split", default="train")
    ap.add_argument("--root", default=None, help="data root of the reference data set")
    ap.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="reference data set option, e.g. n_per_class=100 (repeatable)")
    ap.add_argument("--min-confidence", type=float, required=True, help="C in [0, 1]")
    ap.add_argument("--out", required=True, help="output folder (kept shards, gate_report.json, histogram)")
    ap.add_argument("--with-reference", action="store_true", help="also write the reference images (real + gated)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        report = _run(args)
    except SslAugError as e:
        print(f"ssl-aug: error: {e}", file=sys.stderr)
        return 2
    print(f"kept {report['kept']} of {report['candidates']} candidates ({report['rejected_disagreeing']} disagreeing "
          f"with their label, {report['rejected_unconfident']} below C={report['min_confidence']:g}) -> {args.out}")
    return 0


def _run(args: argparse.Namespace) -> dict:
    from ssl_aug.config import parse_value
    from ssl_aug.data import load_dataset
    from ssl_aug.device import resolve_device
    from ssl_aug.workflows.evaluate_encoder import resolve_encoder

    check_confidence(args.min_confidence)
    options = {}
    for item in args.option:
        if "=" not in item:
            raise SslAugError(f"--option {item!r} is not KEY=VALUE")
        key, value = item.split("=", 1)
        options[key] = parse_value(value)
    device = resolve_device(args.device)
    if args.encoder.startswith("random:"):
        raise SslAugError(f"--encoder {args.encoder!r} is not allowed; give a trained encoder (run directory, "
                          "checkpoint or export directory)")
    backbone, mean, std, _, _ = resolve_encoder(args.encoder, device)
    ref = Path(args.reference).expanduser()
    if ref.is_dir():
        reference = load_dataset("npz", split=args.reference_split, root=str(ref), **options)
    else:
        reference = load_dataset(args.reference, split=args.reference_split, root=args.root, **options)
    reference = reference.decoded()
    cx, cy, cclasses = load_candidates(args.candidates, size=reference.images.shape[-1])
    return gate(backbone, mean, std, reference, (cx, cy), args.min_confidence, args.out,
                with_reference=args.with_reference, candidate_classes=cclasses, seed=args.seed,
                source=str(args.candidates))
