"""Evaluation of a shard pack: images streamed from the store vs gathered into one tensor; writes the
eval_stream section of BENCHMARKS.md.

Generates the ImageNet-like JPEG tree of eval/bench_data.py (100 classes, sides 200-500 px; in a temporary
folder, never committed) at each size, packs it into shards, then evaluates a seeded random encoder on a
seeded stratified 20% hold-out of the pack (the bank is the other 80%) with kNN (k=20) and the linear probe,
in a fresh process per mode:
  - streamed: the shards data set as it loads (an image store; subsets are row lists, features batch by batch);
  - gathered: the same images decoded into one uint8 tensor first (`ImageDataset.decoded()`).
Reports peak memory (PSS of the process tree), wall time and the accuracies (identical by construction).

Usage: python eval/eval_stream.py [--images 5000 20000] [--size 96] [--backbone small_cnn] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

MODES = ("streamed", "gathered")


def child(mode: str, pack: str, size: int, backbone: str) -> None:
    """One evaluation in this process; prints a JSON line {top1_knn, top1_linear, seconds}."""
    from ssl_aug.data import load_dataset
    from ssl_aug.data.holdout import stratified_holdout
    from ssl_aug.evaluation import evaluate_encoder
    from ssl_aug.models import build_backbone

    t0 = time.perf_counter()
    ds = load_dataset("shards", split="train", root=pack, size=size)
    if mode == "gathered":
        ds = ds.decoded()
    bank, held = stratified_holdout(ds.labels, 0.2, seed=0)
    torch.manual_seed(0)
    encoder = build_backbone(backbone).eval()
    report = evaluate_encoder(encoder, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), (ds.images[bank], ds.labels[bank]),
                              (ds.images[held], ds.labels[held]), ks=(20,), linear=True, batch_size=256,
                              progress=False)
    print(json.dumps({"top1_knn": report["knn"]["top1"], "top1_linear": report["linear"]["top1"],
                      "seconds": time.perf_counter() - t0}), flush=True)


def measure(mode: str, pack: Path, size: int, backbone: str) -> dict:
    """Run `child` in a fresh process, polling its PSS every 0.1 s."""
    from bench_data import run_with_peak_pss

    cmd = [sys.executable, __file__, "--child", mode, str(pack), "--size", str(size), "--backbone", backbone]
    out, err, peak = run_with_peak_pss(cmd)
    if err is not None:
        raise RuntimeError(f"{mode} evaluation failed: {err[-2000:]}")
    return {**json.loads(out.strip().splitlines()[-1]), "peak_mb": peak}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, nargs="+", default=[5000, 20000])
    ap.add_argument("--size", type=int, default=96, help="eval image side (shorter side size / 0.875 first)")
    ap.add_argument("--backbone", default="small_cnn")
    ap.add_argument("--workers", type=int, default=2, help="processes generating and packing the tree")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--child", nargs=2, metavar=("MODE", "PACK"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.child[0], args.child[1], args.size, args.backbone)
        return 0
    from bench_data import make_tree

    from ssl_aug.data.shard_pack import pack_shards

    rows = []
    with tempfile.TemporaryDirectory(prefix="ssl_aug_eval_stream_") as tmp:
        for n in args.images:
            tree, pack = Path(tmp) / f"tree{n}", Path(tmp) / f"pack{n}"
            make_tree(tree, n, workers=args.workers)
            pack_shards(tree, pack, shard_size=500, workers=args.workers, verbose=False)
            for mode in MODES:
                r = measure(mode, pack, args.size, args.backbone)
                print(f"{n} images, {mode}: {r}", flush=True)
                rows.append([n, mode, f"{r['peak_mb']:.0f}", f"{r['seconds']:.0f}", f"{r['top1_knn']:.4f}",
                             f"{r['top1_linear']:.4f}"])
    from ssl_aug.benchmarks import markdown_table, update_benchmarks_md

    image_mb = [n * 3 * args.size ** 2 / 2 ** 20 for n in args.images]
    body = (markdown_table(["images in the pack", "evaluation images", "peak PSS (MB, process tree)", "wall s",
                            "kNN top-1 (k=20)", "linear top-1"], rows) + "\n\n"
            + f"A random {args.backbone} (seed 0) at {args.size} px; bank = 80%, queries = a seeded stratified 20% "
            f"hold-out of the same pack; one fresh process per row. The decoded images take "
            + ", ".join(f"{mb:.0f} MB at {n} images" for n, mb in zip(args.images, image_mb))
            + f". 1-minute load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores.")
    print(body)
    if not args.no_write:
        update_benchmarks_md("eval_stream", "Evaluating a shard pack: streamed vs gathered images", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
