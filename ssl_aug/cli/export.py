"""`ssl-aug export RUN_OR_CHECKPOINT --out DIR [--with-head] [--onnx]`: write an export directory."""

from __future__ import annotations

import json

from ssl_aug.cli._common import add_command


def run(args) -> int:
    from ssl_aug.export import METADATA, export_encoder

    out = export_encoder(args.run_or_checkpoint, args.out, with_head=args.with_head, onnx=args.onnx)
    meta = json.loads((out / METADATA).read_text())
    names = ", ".join(meta["files"]) + ", " + METADATA
    print(f"exported {meta['architecture']} ({meta['feature_dim']}-d features, epoch {meta['epoch']}) "
          f"to {out}: {names}")
    return 0


def register(sub) -> None:
    p = add_command(sub, "export", run,
                    help="export a trained encoder (safetensors, plain model.py, torch.export, ONNX, metadata)",
                    description="Export a trained encoder: model.safetensors + model.py + config.json (loads "
                                "without ssl_aug), backbone.pt (torchvision layout, ResNets), encoder.pt2 "
                                "(torch.export), encoder.onnx (--onnx) and encoder.json metadata.")
    p.add_argument("run_or_checkpoint", metavar="RUN_OR_CHECKPOINT",
                   help="run directory (uses checkpoints/last.pt) or checkpoint file")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--with-head", action="store_true",
                   help="also write head.safetensors (projector, prototypes, ...)")
    p.add_argument("--onnx", action="store_true",
                   help="also write encoder.onnx (needs the onnx extra: pip install 'ssl_aug[onnx]')")
