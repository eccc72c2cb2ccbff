"""`ssl-aug data pack SRC DST`: pack a class-per-folder image tree into npz shards of decoded squares or
into tar shards of encoded images (streamed); one pack per split folder when SRC has train/val/... ."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ssl_aug.data.imagefolder import SPLIT_DIRS, pack_imagefolder
from ssl_aug.errors import SslAugError, one_line_parser

__all__ = ["pack_main"]


def pack_main(argv: list[str] | None = None) -> int:
    """`ssl-aug data pack SRC DST [--size 96] [--workers N] [--shard-size K]` -> exit code."""
    ap = one_line_parser(prog="ssl-aug data pack",
                         description="Decode a class-per-folder image tree once into npz shards.")
    ap.add_argument("src", metavar="SRC", help="folder with one sub-folder per class")
    ap.add_argument("dst", metavar="DST", help="output folder for shard_*.npz, classes.txt, pack_report.json")
    ap.add_argument("--size", type=int, default=96, help="output side in pixels (shorter side resize + center crop)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="decoding threads")
    ap.add_argument("--shard-size", type=int, default=None, help="images per shard (npz 10000, shards 1000)")
    ap.add_argument("--format", choices=("npz", "shards"), default="npz",
                    help="npz: decoded fixed-size squares; shards: tar shards of encoded images (streamed)")
    ap.add_argument("--max-res", type=int, default=None, help="shards: cap on the longer side in pixels")
    ap.add_argument("--seed", type=int, default=0, help="shards: seed of the global shuffle")
    ap.add_argument("--quiet", action="store_true", help="no progress bar or report on stderr")
    args = ap.parse_args(argv)
    src, dst = Path(args.src).expanduser(), Path(args.dst).expanduser()
    splits = [d for d in SPLIT_DIRS if (src / d).is_dir()] if src.is_dir() else []
    try:
        for tree, out in [(src / d, dst / d) for d in splits] or [(src, dst)]:
            if args.format == "shards":
                from ssl_aug.data.shard_pack import pack_shards
                rep = pack_shards(tree, out, args.shard_size or 1000, args.max_res, args.workers, args.seed, not args.quiet)
            else:
                rep = pack_imagefolder(tree, out, args.size, args.workers, args.shard_size or 10000, verbose=not args.quiet)
            print(f"{rep.images} images, {len(rep.classes)} classes, {rep.num_skipped} skipped -> {rep.dst}")
    except SslAugError as e:
        print(f"ssl-aug: error: {e}", file=sys.stderr)
        return 2
    print(f"train on it: ssl-aug train RECIPE data.name={'shards' if args.format == 'shards' else 'npz'} data.root={dst}"
          + ("" if splits else ' eval.test_split="train" (a seeded held-out part of each class is the test set)'))
    return 0
