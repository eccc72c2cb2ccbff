"""Corruption throughput: images/s per corruption at 32 px and 224 px, ssl_aug's batched torch corruptions
vs the imagecorruptions package (numpy / scikit-image / OpenCV, one image at a time), same process,
interleaved rounds, medians. Writes the `corruptions` section of BENCHMARKS.md.
Usage: python eval/bench_corruptions.py [--rounds 3] [--severity 3] [--no-write]"""
import argparse
import math
import os
import sys
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from a checkout without installing

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ssl_aug.augment.corruptions import COMMON, corrupt  # noqa: E402
from ssl_aug.augment.corruptions.reference import load_reference  # noqa: E402
from ssl_aug.benchmarks import interleaved_times, markdown_table, update_benchmarks_md  # noqa: E402

SETTINGS = {32: (128, 16), 224: (8, 2)}   # size -> (images per batched call, images the reference runs)


def images(n: int, size: int) -> torch.Tensor:
    """Smooth random uint8 images (N, 3, size, size): upsampled noise, so blurs and JPEG see structure."""
    g = torch.Generator().manual_seed(0)
    low = torch.rand(n, 3, max(2, size // 4), max(2, size // 4), generator=g)
    up = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    return (up * 255).round().to(torch.uint8)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--severity", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    ref = load_reference()
    rows, speedups = [], {32: [], 224: []}
    for name in COMMON:
        row = [name]
        for size, (n_ours, n_ref) in SETTINGS.items():
            x = images(n_ours, size)
            x_np = [im.permute(1, 2, 0).numpy().copy() for im in x[:n_ref]]
            t = interleaved_times({
                "ours": lambda: corrupt(x, name, args.severity),
                "ref": lambda: [ref.corrupt(im, args.severity, name) for im in x_np],
            }, rounds=args.rounds)
            ours, theirs = n_ours / t["ours"][0], n_ref / t["ref"][0]
            speedups[size].append(ours / theirs)
            row += [f"{ours:,.0f}", f"{theirs:,.0f}", f"{ours / theirs:.1f}x"]
        rows.append(row)
        print(" | ".join(row), flush=True)
    geo = {s: math.exp(sum(map(math.log, v)) / len(v)) for s, v in speedups.items()}
    rows.append(["**geometric mean**", "", "", f"**{geo[32]:.1f}x**", "", "", f"**{geo[224]:.1f}x**"])
    table = markdown_table(["corruption (severity %d)" % args.severity, "ours 32 px img/s",
                            "imagecorruptions 32 px img/s", "speed-up 32 px", "ours 224 px img/s",
                            "imagecorruptions 224 px img/s", "speed-up 224 px"], rows)
    print(table)
    slowest = min(zip(speedups[32], COMMON))
    body = (table + "\n\n" +
            f"CPU, {torch.get_num_threads()} torch threads; ours: one batched call of {SETTINGS[32][0]} (32 px) / "
            f"{SETTINGS[224][0]} (224 px) uint8 images -> uint8, the reference: a Python loop over "
            f"{SETTINGS[32][1]} / {SETTINGS[224][1]} images (imagecorruptions {version('imagecorruptions')}, numpy "
            f"{np.__version__}); medians of {args.rounds} interleaved rounds after a warm-up, in one process. "
            f"Target: >= 10x at 32 px: {'met' if geo[32] >= 10 else 'not met'} (geometric mean {geo[32]:.1f}x; "
            f"{sum(v >= 10 for v in speedups[32])} of {len(COMMON)} corruptions reach it; slowest: {slowest[1]} "
            f"{slowest[0]:.1f}x). " + (
                "The machine was loaded by other jobs while this ran (see the load average above): absolute rates "
                "are low. " if os.getloadavg()[0] > 1.5 else "") +
            "Ratios are measured side by side. JPEG is per image in both (libjpeg through torchvision vs Pillow).")
    if not args.no_write:
        print(f"updated {update_benchmarks_md('corruptions', 'Corruptions: batched torch vs imagecorruptions', body)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
