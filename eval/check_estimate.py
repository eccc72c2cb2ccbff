"""How good is the memory / time estimate a run prints first? Runs a few recipes for a few steps in
fresh processes and compares the estimate with the measured peak resident memory and seconds per step.

    python eval/check_estimate.py [--quick] [--no-write]

Each row: estimated host memory vs the process's peak RSS, estimated vs measured seconds per
optimiser step (median over the logged steps after the first). The estimate is meant to hold to
about a factor of two; BENCHMARKS.md#estimate keeps the table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CASES = [  # (name, recipe, overrides, steps)
    ("small CNN 20 px, batch 256", "quickstart", [], 6),
    ("small CNN 32 px, batch 128 (image folder)", "simclr_imagefolder_cpu", [], 6),
    ("ResNet-18 64 px, batch 32 (image folder)", "simclr_imagefolder",
     ["model.backbone=resnet18", "augment.size=64", "augment.blur.kernel_size=7", "data.options.size=72",
      "train.batch_size=32", "train.amp=none", "train.channels_last=false"], 4),
    ("ResNet-50 224 px, batch 8, fp32 (image folder)", "simclr_imagefolder",
     ["train.batch_size=8", "train.amp=none", "train.channels_last=false"], 3),
]
WRAP = ("import sys, resource, atexit; atexit.register(lambda: print('PEAK_RSS', resource.getrusage("
        "resource.RUSAGE_SELF).ru_maxrss * 1024, file=sys.stderr)); from ssl_aug.cli import main; "
        "sys.exit(main(sys.argv[1:]))")


def make_folder(root: Path, n: int = 600) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(3):
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
        for i in range(n // 3):
            Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(root / f"c{c}" / f"{i}.png")
    return root


def run_case(recipe: str, overrides: list[str], steps: int, work: Path, folder: Path) -> dict:
    run = work / f"run_{len(list(work.glob('run_*')))}"
    argv = ["train", recipe, *overrides, f"train.max_steps={steps}", "train.log_every=1", "eval.final_knn=false",
            "eval.knn_every=0", "train.check_fit=false", f"data.root={folder}", "--no-progress",
            "--output-dir", str(run)]
    env = dict(os.environ, SSL_AUG_CACHE=str(work / "cache"))
    done = subprocess.run([sys.executable, "-c", WRAP, *argv], capture_output=True, text=True, env=env, timeout=1800)
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    line = next(x for x in (done.stdout + done.stderr).splitlines() if x.startswith("estimate:"))
    est_gib = float(re.search(r"estimate: ([\d.]+) GiB host", line).group(1))
    est_s = float(re.search(r"steps of ([\d.e+-]+) s", line).group(1))
    peak = int(re.search(r"PEAK_RSS (\d+)", done.stderr).group(1))
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    batch = json.loads((run / "config.json").read_text())["train"]["batch_size"]
    per_step = [batch / r["img_per_s"] for r in records if r.get("type") == "step" and r["step"] > 1]
    return {"est_gib": est_gib, "peak_gib": peak / 2**30, "est_s": est_s,
            "step_s": statistics.median(per_step)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="the two small-CNN cases only")
    ap.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md alone")
    args = ap.parse_args(argv)
    from ssl_aug.benchmarks import markdown_table, update_benchmarks_md

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        folder = make_folder(work / "images")
        for name, recipe, overrides, steps in CASES[:2] if args.quick else CASES:
            r = run_case(recipe, overrides, steps, work, folder)
            rows.append([name, f"{r['est_gib']:.2f}", f"{r['peak_gib']:.2f}", f"{r['est_gib'] / r['peak_gib']:.2f}",
                         f"{r['est_s']:.2f}", f"{r['step_s']:.2f}", f"{r['est_s'] / r['step_s']:.2f}"])
            print(" | ".join(rows[-1]), flush=True)
    table = markdown_table(["run (CPU)", "estimated GiB", "peak RSS GiB", "ratio", "estimated s/step",
                            "measured s/step", "ratio"], rows)
    print(table)
    if not args.no_write and not args.quick:
        update_benchmarks_md("estimate", "Memory and time estimate vs measured runs (eval/check_estimate.py)",
                             "Ratio = estimate / measured (1 = exact; the estimate aims at a factor of two). One "
                             "fresh process per row, seconds per step = median over its logged steps; the load "
                             "average above says how busy the machine was (a busy machine makes the short rate "
                             "probe optimistic).\n\n"
                             + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
