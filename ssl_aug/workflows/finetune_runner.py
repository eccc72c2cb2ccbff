"""Fine-tuning workflows behind `ssl-aug finetune` (the command itself: ssl_aug.cli.finetune_run): fine-tune
an encoder for one setting, or the cells x seeds of a fine-tuning ablation spec, and make the results table.

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

import json
import math
from pathlib import Path

from ssl_aug.config import read_toml, resolve_recipe_path
from ssl_aug.errors import SslAugError
from ssl_aug.evaluation.finetune import FinetuneConfig, finetune

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
