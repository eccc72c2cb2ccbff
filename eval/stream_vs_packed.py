"""Streaming shards vs the packed in-memory path at the same budget and image size; writes the
stream_parity section of BENCHMARKS.md.

Writes CIFAR-10 as a JPEG tree (train/: a seeded class-balanced subset, test/: the whole test split;
32 px, quality 95; in a temporary folder, never committed), packs it into shards, then trains the
`simclr_cifar10_cpu` recipe on the same tree twice per seed, in fresh processes:
  - packed: data.name = "imagefolder" (decoded once into uint8 npz at 32 px, held in memory);
  - streamed: data.name = "shards" (encoded images streamed, decoded in DataLoader workers);
and reads each run's final kNN top-1 (k=200, T=0.1, test split) from its eval.json. The raw-pixel and
random-encoder kNN on the same test split are the floors beside them.

Usage: python eval/stream_vs_packed.py [--train 20000] [--epochs 5] [--seeds 0 1] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import numpy as np  # noqa: E402


def write_tree(root: Path, train: int, seed: int = 0) -> None:
    """root/{train,test}/<class>/<i>.jpg from the local CIFAR-10 ($SSL_AUG_DATA)."""
    from PIL import Image

    from ssl_aug.data.cifar import CIFAR10_CLASSES, load_cifar10
    from ssl_aug.data.subset import balanced_subset

    for split, n in (("train", train), ("test", None)):
        ds = load_cifar10(split)
        idx = balanced_subset(ds.labels, n, seed) if n and n < len(ds.labels) else range(len(ds.labels))
        for i in idx:
            i = int(i)
            d = root / split / CIFAR10_CLASSES[int(ds.labels[i])]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(ds.images[i].permute(1, 2, 0).numpy()).save(d / f"{i:05d}.jpg", quality=95)


def train_once(name: str, data: list[str], out: Path, seed: int, epochs: int) -> dict:
    """One `ssl-aug train simclr_cifar10_cpu` in a fresh process; returns its eval.json."""
    cmd = [sys.executable, "-m", "ssl_aug", "train", "simclr_cifar10_cpu", *data, "data.subset=0", f"seed={seed}",
           f"train.epochs={epochs}", f"output_dir={json.dumps(str(out))}", "--no-progress"]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} seed {seed} failed: {proc.stderr[-2000:]}")
    result = json.loads((out / "eval.json").read_text())
    result["wall_s"] = time.perf_counter() - t0
    print(f"{name} seed {seed}: kNN {result['knn_top1']:.4f}, {result['wall_s']:.0f} s", flush=True)
    return result


def floors(tree: Path) -> dict:
    """Chance, raw-pixel and random-encoder kNN on the tree (the recipe's model and kNN settings)."""
    from ssl_aug.config import load_recipe
    from ssl_aug.evaluation.floors import floors_for_config

    cfg = load_recipe("simclr_cifar10_cpu", ['data.name="imagefolder"', f"data.root={json.dumps(str(tree))}",
                                                 "data.options.size=32", "data.subset=0"])
    return floors_for_config(cfg)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=20000, help="training images in the tree")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers of the streamed runs")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    from ssl_aug.data.shard_pack import pack_shards

    results: dict[str, list[dict]] = {"packed in memory (imagefolder -> npz)": [], "streamed shards": []}
    with tempfile.TemporaryDirectory(prefix="ssl_aug_stream_parity_") as tmp:
        tree, shards = Path(tmp) / "tree", Path(tmp) / "shards"
        os.environ["SSL_AUG_CACHE"] = str(Path(tmp) / "cache")  # image-folder packs stay in the temporary folder
        t0 = time.perf_counter()
        write_tree(tree, args.train)
        for split in ("train", "test"):
            pack_shards(tree / split, shards / split, shard_size=1000, workers=args.workers, verbose=False)
        print(f"tree written and packed in {time.perf_counter() - t0:.0f} s", flush=True)
        floor = floors(tree)
        paths = {
            "packed in memory (imagefolder -> npz)": [
                'data.name="imagefolder"', f"data.root={json.dumps(str(tree))}", "data.options.size=32"],
            "streamed shards": [
                'data.name="shards"', f"data.root={json.dumps(str(shards))}",
                f"data.options.workers={args.workers}", "data.options.eval_resize=32"],
        }
        for seed in args.seeds:  # interleaved: load drift hits both paths alike
            for k, data in paths.items():
                out = Path(tmp) / f"{k.split()[0]}_{seed}"
                results[k].append(train_once(k, data, out, seed, args.epochs))
    rows = []
    for k, rs in results.items():
        acc = np.array([r["knn_top1"] for r in rs])
        rows.append([k, " / ".join(f"{a:.4f}" for a in acc), f"{acc.mean():.4f} ± {acc.std():.4f}",
                     f"{np.median([r['train_time_s'] for r in rs]):.0f}"])
    means = [np.mean([r["knn_top1"] for r in rs]) for rs in results.values()]
    gap = 100 * (means[1] - means[0])
    from ssl_aug.benchmarks import markdown_table, update_benchmarks_md

    body = (markdown_table(["path", f"kNN top-1 per seed ({', '.join(map(str, args.seeds))})", "mean ± std",
                            "train s (median)"], rows) + "\n\n"
            + f"Same JPEG tree (CIFAR-10: {args.train} class-balanced training images, the 10,000 test images, "
            f"32 px, JPEG quality 95), recipe `simclr_cifar10_cpu` ({args.epochs} epochs, batch 256, small CNN), "
            f"kNN k=200, T=0.1 on the test split, evaluated on whole 32 px images on both paths "
            f"(`data.options.eval_resize = 32` for the shards). Streamed runs: {args.workers} DataLoader workers "
            f"decoding the shards. Floors on the same split: raw pixels {floor['raw pixels']:.4f}, random encoder "
            f"{floor['random encoder']:.4f}. Streamed minus packed: {gap:+.2f} points (target: within ±1).")
    print(body)
    if not args.no_write:
        update_benchmarks_md("stream_parity",
                             "Streamed shards vs packed in-memory data, same budget (CIFAR-10 JPEG tree)", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
