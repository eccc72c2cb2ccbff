"""What `ssl-aug finetune` runs: flags and key=value settings (or a spec of cells) -> fine-tuning runs of an
encoder on its data, a results table and JSON."""

from __future__ import annotations

from pathlib import Path

import torch

from ssl_aug.config import apply_overrides
from ssl_aug.errors import SslAugError
from ssl_aug.evaluation.finetune import FinetuneConfig
from ssl_aug.io import atomic_write_json, atomic_write_text
from ssl_aug.workflows.finetune_runner import load_spec, results_table, run_cells


def _data(args, data_keys):
    from ssl_aug.workflows.evaluate_encoder import _subset, load_eval_data

    (train, test), name, how = load_eval_data(data_keys, args.data, args.root, roles=("train", "test"))
    used = _subset(*test, args.test_subset, "--test-subset")
    if len(used[1]) != len(test[1]):
        how += f"; {len(used[1])} of the {len(test[1])} test images used (--test-subset)"
    return train, used, name, how


def finetune_command(args) -> int:
    from ssl_aug.device import resolve_device
    from ssl_aug.workflows.evaluate_encoder import resolve_encoder

    device = resolve_device(args.device)
    base = {}
    for item in args.overrides:
        if "=" not in item:
            raise SslAugError(f"override {item!r} must look like key=value, e.g. mix=mixup label_fraction=0.1")
    base = apply_overrides(base, list(args.overrides))
    if args.spec:
        spec = load_spec(args.spec)
        cells = {name: {**spec.get("finetune", {}), **base, **cell} for name, cell in spec["cells"].items()}
        seeds = args.seeds or int(spec.get("seeds", 1))
        out_dir = Path(args.output_dir or spec.get("output_dir") or f"runs/{Path(args.spec).stem}")
        title = spec.get("description") or Path(args.spec).stem
        if args.cells:
            wanted = [c.strip() for c in args.cells.split(",") if c.strip()]
            unknown = [c for c in wanted if c not in cells]
            if unknown:
                raise SslAugError(f"--cells {unknown[0]!r} is not a cell of {args.spec}; cells: {', '.join(cells)}")
            cells = {c: cells[c] for c in wanted}
        if not args.test_subset:
            args.test_subset = int(spec.get("test_subset", 0))
    else:
        FinetuneConfig.from_dict(base)  # bad keys/values fail before any data is loaded
        cells = {base.get("mix", "none"): base}
        seeds = args.seeds or 1
        out_dir = Path(args.output_dir or "runs/finetune")
        title = f"fine-tuning {args.encoder}"
    backbone, mean, std, data_keys, label = resolve_encoder(args.encoder, device)
    train, test, name, how = _data(args, data_keys)
    if mean is None:  # random baseline: the training set's own statistics
        pixels = train[0][:5000].float().div_(255)
        mean = pixels.mean(dim=(0, 2, 3)).tolist()
        std = pixels.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()
    print(f"fine-tuning {label} on {name}: {how}")
    if args.threads:
        torch.set_num_threads(args.threads)

    def write(results):
        table = results_table(results, title) + f"\nEncoder: `{label}`; data: {name} ({how}).\n"
        atomic_write_text(out_dir / "results.md", table)
        atomic_write_json(out_dir / "results.json", {"encoder": label, "data": name, "split": how, "cells": results})
        return table

    results = run_cells(backbone, mean, std, train, test, cells, seeds, out_dir, progress=not args.no_progress,
                        on_result=write)
    table = write(results)
    print("\n" + table)
    print(f"wrote {out_dir / 'results.md'}, {out_dir / 'results.json'}")
    return 0
