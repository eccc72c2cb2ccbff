"""`ssl-aug finetune ENCODER`: resolve the encoder (run directory, checkpoint, export directory or
random:BACKBONE), load its data, fine-tune (one setting, or the cells x seeds of a fine-tuning ablation
spec) and write a results table.

Ablation spec (TOML, shipped ones in ssl_aug/recipes/ablate_finetune_*.toml):
    description = "..."
    seeds = 2
    output_dir = "runs/finetune_mixing"
    test_subset = 0                        # 0 = the whole test split
    [finetune]                             # FinetuneConfig keys shared by every cell
    label_fraction = 0.1
    tta = true
    [cells.mixup]                          # cell name -> FinetuneConfig overrides
    mix = "mixup"
Each run lives in output_dir/CELL/seedN (resumable; a finished run is read back, not redone).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from ssl_aug.config import apply_overrides, read_toml, resolve_recipe_path
from ssl_aug.errors import SslAugError
from ssl_aug.evaluation.finetune import FinetuneConfig, finetune
from ssl_aug.io import atomic_write_json, atomic_write_text

SPEC_KEYS = ("description", "seeds", "output_dir", "test_subset", "finetune", "cells")
COLUMNS = (("top1", "top-1"), ("top5", "top-5"), ("ece", "ECE"), ("nll", "NLL"), ("tta.top1", "top-1 TTA"),
           ("tta.ece", "ECE TTA"), ("tta.delta_top1", "TTA gain"))


def load_spec(path) -> dict:
    spec = read_toml(resolve_recipe_path(path))
    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if unknown:
        raise SslAugError(f"unknown fine-tuning spec key {unknown[0]!r}; allowed: {', '.join(SPEC_KEYS)}")
    if not spec.get("cells"):
        raise SslAugError("a fine-tuning spec needs [cells.NAME] tables (FinetuneConfig overrides per cell)")
    for name, cell in spec["cells"].items():
        try:
            FinetuneConfig.from_dict({**spec.get("finetune", {}), **cell})
        except SslAugError as exc:
            raise SslAugError(f"fine-tuning cell {name!r}: {exc}") from None
    return spec


def _value(report: dict, key: str):
    node = report
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def results_table(results: dict[str, list[dict]], title: str) -> str:
    """Markdown: per cell, mean ± std over seeds (and the per-seed values of top-1)."""
    cols = [(k, h) for k, h in COLUMNS if any(_value(r, k) is not None for rs in results.values() for r in rs)]
    lines = [f"## {title}", "", "| cell | seeds | " + " | ".join(h for _, h in cols) + " | top-1 per seed |",
             "|---|---|" + "---|" * (len(cols) + 1)]
    for cell, reports in results.items():
        row = [cell, str(len(reports))]
        for key, _ in cols:
            values = [float(_value(r, key)) for r in reports if _value(r, key) is not None]
            if not values:
                row.append("–")
                continue
            mean = sum(values) / len(values)
            std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
            row.append(f"{mean:.4f} ± {std:.4f}" if len(values) > 1 else f"{mean:.4f}")
        row.append(" / ".join(f"{r['top1']:.4f}" for r in reports))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def _data(args, data_keys):
    from ssl_aug.workflows.evaluate_encoder import _subset, load_eval_data

    ns = argparse.Namespace(data=args.data, root=args.root, split=None, test_split=None)
    (train, test), name, how = load_eval_data(data_keys, ns, roles=("train", "test"))
    used = _subset(*test, args.test_subset, "--test-subset")
    if len(used[1]) != len(test[1]):
        how += f"; {len(used[1])} of the {len(test[1])} test images used (--test-subset)"
    return train, used, name, how


def run_cells(encoder, mean, std, train, test, cells: dict[str, dict], seeds: int, out_dir: Path,
              progress: bool = True, on_result=None) -> dict[str, list[dict]]:
    """Fine-tune every cell (name -> FinetuneConfig dict) for seeds 0..seeds-1 in out_dir/CELL/seedN;
    on_result(results so far) after every run (the table is rewritten as runs finish)."""
    results: dict[str, list[dict]] = {}
    total, done = len(cells) * seeds, 0
    for cell, cfg in cells.items():
        for seed in range(seeds):
            done += 1
            run_dir = out_dir / cell / f"seed{seed}"
            finished = run_dir / "finetune.json"
            config = FinetuneConfig.from_dict({**cfg, "seed": seed})
            if finished.is_file() and json.loads(finished.read_text()).get("config") == json.loads(
                    json.dumps(vars(config))):
                print(f"[{done}/{total}] {cell} seed {seed}: done earlier, read back")
                results.setdefault(cell, []).append(json.loads(finished.read_text()))
            else:
                print(f"[{done}/{total}] {cell} seed {seed} -> {run_dir}")
                results.setdefault(cell, []).append(
                    finetune(encoder, mean, std, train, test, config, run_dir=run_dir, progress=progress))
            if on_result is not None:
                on_result(results)
    return results


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
