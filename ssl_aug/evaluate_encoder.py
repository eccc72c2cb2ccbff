"""`ssl-aug eval ENCODER ...`: resolve an encoder (run directory, checkpoint, export directory or a
randomly initialised baseline), load the data it should be measured on, run the chosen evaluations
and print/write the results."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ssl_aug.data import load_dataset
from ssl_aug.errors import SslAugError
from ssl_aug.evaluation import evaluate_encoder, format_report
from ssl_aug.data import balanced_subset
from ssl_aug.device import resolve_device


def resolve_encoder(spec: str, device: torch.device, data_name: str | None):
    """-> (backbone taking normalised floats, mean, std, data name, data options, label for reports)."""
    if spec.startswith("random:"):
        from ssl_aug.models import build_backbone

        torch.manual_seed(0)
        return build_backbone(spec.split(":", 1)[1]).to(device).eval(), None, None, data_name, {}, spec
    path = Path(spec)
    if not path.exists():
        raise SslAugError(f"encoder {spec!r} not found: give a run directory, a checkpoint .pt, an export "
                          "directory (with encoder.json) or random:BACKBONE")
    if (path / "encoder.json").is_file() or path.name == "encoder.json":
        from ssl_aug.export import load_encoder

        encoder = load_encoder(path, device=device)
        meta = encoder.metadata
        options = ((meta.get("recipe") or {}).get("data") or {}).get("options") or {}
        return (encoder.backbone, list(encoder.mean), list(encoder.std), data_name or meta.get("dataset"),
                dict(options), str(path))
    from ssl_aug.config import config_from_dict
    from ssl_aug.export import encoder_from_checkpoint
    from ssl_aug.augment.recipe import normalization

    backbone, config = encoder_from_checkpoint(path, device=device)
    cfg = config_from_dict(config)
    mean, std = normalization(cfg)
    return backbone, mean, std, data_name or cfg.data.name, dict(cfg.data.options), str(path)


def _subset(ds, n: int, seed: int = 0):
    if n and n < len(ds.labels):
        idx = balanced_subset(ds.labels, n, seed)
        return ds.images[idx], ds.labels[idx]
    return ds.images, ds.labels


def eval_command(args) -> int:
    device = resolve_device(args.device)
    backbone, mean, std, data_name, options, label = resolve_encoder(args.encoder, device, args.data)
    if data_name is None:
        raise SslAugError("no data set known for this encoder: pass --data NAME (cifar10, cifar100, stl10, "
                          "imagefolder, npz, embedded)")
    if args.data and args.data != data_name:
        options = {}
    train = load_dataset(data_name, split="train", root=args.root, **options)
    test = load_dataset(data_name, split="test", root=args.root, **options)
    if mean is None:  # random baseline: normalise with the training set's own statistics
        pixels = train.images[:5000].float().div_(255)
        mean = pixels.mean(dim=(0, 2, 3)).tolist()
        std = pixels.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()
    knn = args.knn or not (args.linear or args.tta or args.invariance)
    results = evaluate_encoder(backbone, mean, std, _subset(train, args.train_subset), _subset(test, args.test_subset),
                               knn=knn, linear=args.linear or args.tta, tta=args.tta, invariance=args.invariance,
                               ks=tuple(args.k), temperature=args.temperature,
                               progress=not args.no_progress)
    results = {"encoder": label, "data": data_name, **results}
    print(format_report(results))
    out = Path(args.json) if args.json else None
    if out is None:
        base = Path(args.encoder)
        out = (base if base.is_dir() else base.parent) / "eval_cli.json" if not args.encoder.startswith("random:") \
            else Path(f"eval_{args.encoder.replace(':', '_')}.json")
    out.write_text(json.dumps(results, indent=2, default=float) + "\n")
    print(f"wrote {out}")
    return 0
