"""Training-step benchmark: the full step (views made on the fly + forward/backward/step) against the
model-only step on pre-made views of the same batch, measured interleaved in one process; plus
images/s for each shipped recipe. Prints a table and rewrites the `train` section of BENCHMARKS.md.

    python eval/bench_train.py [--quick]      or      ssl-aug bench train [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
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


def _trainer(recipe: str, overrides: list[str], batch: int, size: int) -> Trainer:
    cfg = load_recipe(recipe, overrides + [f"train.batch_size={batch}", "train.epochs=1000", "device=\"cpu\""])
    return Trainer(cfg, run_dir=tempfile.mkdtemp(prefix="ssl_aug_bench_"), progress=False,
                   train_data=_synthetic(batch * 2, size))


def step_overhead(recipe: str, overrides: list[str], batch: int, size: int, steps: int, rounds: int) -> dict:
    """Median seconds per step of full vs model-only steps, alternating rounds of `steps` each."""
    trainer = _trainer(recipe, overrides, batch, size)
    images = trainer.data.images[:batch]
    premade = trainer.make_views(images)
    trainer.optimize(trainer.make_views(images))  # warm-up
    trainer.optimize(premade)
    full, model_only, views_only = [], [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(steps):
            trainer.optimize(premade)
        model_only.append((time.perf_counter() - t0) / steps)
        t0 = time.perf_counter()
        for _ in range(steps):
            trainer.optimize(trainer.make_views(images))
        full.append((time.perf_counter() - t0) / steps)
        t0 = time.perf_counter()
        for _ in range(steps):
            trainer.make_views(images)
        views_only.append((time.perf_counter() - t0) / steps)
    return {"full": statistics.median(full), "model": statistics.median(model_only),
            "views": statistics.median(views_only)}


RECIPES = [  # (label, recipe, overrides, batch, image size)
    ("quickstart (embedded, small_cnn)", "quickstart", [], 256, None),
    ("simclr_cifar10 with small_cnn", "simclr_cifar10", ["model.backbone=\"small_cnn\""], 256, 32),
    ("swav_cifar10 with small_cnn", "swav_cifar10", ["model.backbone=\"small_cnn\""], 256, 32),
    ("simclr_cifar10 (cifar_resnet18)", "simclr_cifar10", [], 64, 32),
    ("swav_cifar10 (cifar_resnet18)", "swav_cifar10", [], 64, 32),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_train", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer steps, no BENCHMARKS.md update")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    rounds, steps = (2, 2) if args.quick else (args.rounds, 5)

    load_before = os.getloadavg()[0]
    head = step_overhead("simclr_cifar10", ["model.backbone=\"small_cnn\""], 256, 32, steps, rounds)
    ratio = head["full"] / head["model"]
    overhead_rows = [["simclr_cifar10 views, small_cnn, 32 px, B=256", f"{head['model'] * 1e3:.1f}",
                      f"{head['full'] * 1e3:.1f}", f"{head['views'] * 1e3:.1f}", f"{ratio:.3f}"]]
    overhead = markdown_table(["setting", "model-only step (ms)", "full step (ms)", "views alone (ms)",
                               "full / model-only"], overhead_rows)

    rows = []
    for label, recipe, overrides, batch, size in RECIPES:
        if args.quick and "resnet18" in label:
            continue
        if size is None:
            size = int(load_recipe(recipe).augment.get("size", 32))
        r = step_overhead(recipe, overrides, batch, size, 1 if "resnet18" in label else steps,
                          1 if args.quick or "resnet18" in label else 3)
        rows.append([label, batch, f"{batch / r['full']:.0f}", f"{r['views'] / r['full']:.1%}"])
    throughput = markdown_table(["recipe", "batch", "train img/s (full step)", "time making views"], rows)
    body = (f"Full training step vs model-only step on pre-made views of the same batch (medians of "
            f"{rounds} interleaved rounds of {steps} steps; target full/model-only <= 1.05 on CPU):\n\n"
            f"{overhead}\n\nThroughput per recipe (input images per second, 1 process, CPU):\n\n{throughput}\n\n"
            f"1-minute load average {load_before:.1f} at start, {os.getloadavg()[0]:.1f} at end (other jobs on "
            f"the machine inflate absolute times; the ratio is measured side by side).\n")
    print(body)
    if not (args.quick or args.no_write):
        path = update_benchmarks_md("train", "Training step: augmentation overhead and throughput", body)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
