"""Training-step benchmark: the real training loop (Trainer.fit) against the model-only step on pre-made
views of the same batch, measured interleaved in one process; plus images/s for each shipped recipe.
Prints a table and rewrites the `train` section of BENCHMARKS.md.

    python eval/bench_train.py [--quick]      or      ssl-aug bench train [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from ssl_aug.benchmarks import markdown_table, update_benchmarks_md
from ssl_aug.config import load_recipe
from ssl_aug.data import ImageDataset
from ssl_aug.train import Trainer


def _synthetic(n: int, size: int, seed: int = 0) -> ImageDataset:
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=gen)
    return ImageDataset(images=images, labels=torch.zeros(n, dtype=torch.long), classes=["x"], name="synthetic")


def _trainer(recipe: str, overrides: list[str], batch: int, size: int, n_images: int | None = None,
             callbacks=()) -> Trainer:
    cfg = load_recipe(recipe, overrides + [f"train.batch_size={batch}", "train.epochs=1000", "device=\"cpu\""])
    return Trainer(cfg, run_dir=tempfile.mkdtemp(prefix="ssl_aug_bench_"), progress=False,
                   train_data=_synthetic(n_images or batch * 2, size), callbacks=callbacks)


def step_overhead(recipe: str, overrides: list[str], batch: int, size: int, steps: int, rounds: int) -> dict:
    """Seconds per step (medians over `rounds`, first round dropped as warm-up) of
    - "loop": the real training loop (Trainer.fit: views, step, loss bookkeeping, logging every `steps`),
    - "model": the model-only step (optimize on pre-made views of one batch),
    - "views": making the views alone, "views_then_step": optimize(make_views(batch)),
    measured interleaved: an epoch of the loop is `steps` steps, and at each epoch end a callback runs
    `steps` model-only steps, view calls and views-then-steps on a second trainer of the same recipe.
    "loop_cpu" / "model_cpu": the same as process CPU seconds (less sensitive to other jobs' load)."""
    ref = _trainer(recipe, overrides, batch, size)
    images = ref.data.images[:batch]
    premade = ref.make_views(images)
    ref.optimize(ref.make_views(images))  # warm-up
    ref.optimize(premade)
    rows = {k: [] for k in ("loop", "model", "views", "views_then_step", "loop_cpu", "model_cpu")}
    marks = {}

    def timed(fn) -> tuple[float, float]:
        w, c = time.perf_counter(), time.process_time()
        for _ in range(steps):
            fn()
        return (time.perf_counter() - w) / steps, (time.process_time() - c) / steps

    def interleaved(trainer, epoch) -> dict:
        now_cpu = time.process_time()
        if "cpu" in marks:
            rows["loop_cpu"].append((now_cpu - marks["cpu"]) / steps)
        wall, cpu = timed(lambda: ref.optimize(premade))
        rows["model"].append(wall)
        rows["model_cpu"].append(cpu)
        rows["views"].append(timed(lambda: ref.make_views(images))[0])
        rows["views_then_step"].append(timed(lambda: ref.optimize(ref.make_views(images)))[0])
        marks["cpu"] = time.process_time()
        return {}

    loop = _trainer(recipe, overrides + [f"train.log_every={steps}", "eval.knn_every=1",
                                         f"train.checkpoint_every={10**9}", f"train.max_steps={steps * (rounds + 1)}"],
                    batch, size, n_images=batch * steps, callbacks=[interleaved])
    marks["cpu"] = time.process_time()
    loop.fit()
    rows["loop"] = [r["epoch_time_s"] / steps for r in loop.history]
    return {k: statistics.median(v[1:] if len(v) > 1 else v) for k, v in rows.items()}


RECIPES = [  # (label, recipe, overrides, batch, image size)
    ("quickstart (embedded, small_cnn)", "quickstart", [], 256, None),
    ("simclr_cifar10 with small_cnn", "simclr_cifar10", ["model.backbone=\"small_cnn\""], 256, 32),
    ("swav_cifar10 with small_cnn", "swav_cifar10", ["model.backbone=\"small_cnn\""], 256, 32),
    ("simclr_cifar10 (cifar_resnet18)", "simclr_cifar10", [], 64, 32),
    ("swav_cifar10 (cifar_resnet18)", "swav_cifar10", [], 64, 32),
]


OVERHEAD = ("simclr_cifar10_cpu", [], 256, 32)  # the CPU recipe (small CNN 32-256, 32 px, batch 256)


def _overhead_untuned(steps: int, rounds: int) -> dict | None:
    """The same overhead measurement in a child process with glibc's allocator left untuned."""
    env = dict(os.environ, SSL_AUG_MALLOC_TUNE="0")
    cmd = [sys.executable, "-m", "ssl_aug.benchmarks.train", "--overhead-json", "--rounds", str(rounds),
           "--steps", str(steps)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"untuned-allocator run failed: {proc.stderr.strip()[-300:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _overhead_row(label: str, r: dict) -> list:
    return [label, f"{r['model'] * 1e3:.1f}", f"{r['loop'] * 1e3:.1f}", f"{r['views'] * 1e3:.1f}",
            f"{r['views_then_step'] / r['model']:.3f}", f"**{r['loop'] / r['model']:.3f}**",
            f"{r['loop_cpu'] / r['model_cpu']:.3f}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_train", description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer steps, no BENCHMARKS.md update")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--overhead-json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    rounds, steps = (2, 2) if args.quick else (args.rounds, args.steps)
    recipe, overrides, batch, size = OVERHEAD
    if args.overhead_json:
        print(json.dumps(step_overhead(recipe, overrides, batch, size, steps, rounds)))
        return 0

    load_before = os.getloadavg()[0]
    head = step_overhead(recipe, overrides, batch, size, steps, rounds)
    overhead_rows = [_overhead_row(f"{recipe}, B={batch}, glibc allocator tuned (the trainer's default)", head)]
    untuned = None if args.quick else _overhead_untuned(steps, rounds)
    if untuned:
        overhead_rows.append(_overhead_row(f"{recipe}, B={batch}, allocator untuned (SSL_AUG_MALLOC_TUNE=0)", untuned))
    overhead = markdown_table(["setting", "model-only step (ms)", "training-loop step (ms)", "views alone (ms)",
                               "views-then-step / model-only", "loop / model-only", "loop / model-only (CPU time)"],
                              overhead_rows)

    rows = []
    for label, rec, over, b, sz in RECIPES:
        if args.quick and "resnet18" in label:
            continue
        if sz is None:
            sz = int(load_recipe(rec).augment.get("size", 32))
        r = step_overhead(rec, over, b, sz, 1 if "resnet18" in label else steps,
                          1 if args.quick or "resnet18" in label else 3)
        rows.append([label, b, f"{b / r['loop']:.0f}", f"{r['views'] / r['loop']:.1%}"])
    throughput = markdown_table(["recipe", "batch", "train img/s (training loop)", "time making views"], rows)
    body = (f"Training-loop step (Trainer.fit: views, step, bookkeeping, logging every {steps} steps) vs the "
            f"model-only step on pre-made views of one batch, interleaved epoch by epoch in one process (medians "
            f"of {rounds} rounds of {steps} steps after one warm-up round; target loop / model-only <= 1.05 on "
            f"CPU). The untuned row runs in a child process with SSL_AUG_MALLOC_TUNE=0:\n\n{overhead}\n\n"
            f"Throughput per recipe (input images per second, 1 process, CPU):\n\n{throughput}\n\n"
            f"1-minute load average {load_before:.1f} at start, {os.getloadavg()[0]:.1f} at end (other jobs "
            f"share the 2 cores and inflate absolute times; ratios are measured side by side, CPU-time ratios are "
            f"the least sensitive to that load).\n")
    print(body)
    if not (args.quick or args.no_write):
        path = update_benchmarks_md("train", "Training step: augmentation overhead and throughput", body)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
