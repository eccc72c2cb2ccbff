"""The host side of decoding on the device: how fast DataLoader workers feed encoded batches from tar
shards (read, shuffle, crop boxes; the bytes handed to the training process, where nvjpeg would
decode them), and what each part costs; writes the feed section of BENCHMARKS.md.

Generates an ImageNet-like JPEG tree (bench_data.make_tree; never committed), packs it into shards, then
measures in one process, side by side:
  - per image: one sample's tar records read by the standard library's `tarfile` vs the direct ustar
    reader (ssl_aug.data.shard_read.tar_members); crop boxes drawn per image (sample_boxes) vs per
    batch (sample_boxes_batch, the same boxes);
  - the feed over several epochs (epoch boundaries included), with the next epoch's workers started
    during the current epoch's tail (the default) vs started when the epoch begins (`close()` before
    each epoch), with the peak memory of the process tree;
  - the same two for the worker-decode path (decode + 2 crops at 224 in the workers), the CPU training path.

Usage: python eval/bench_feed.py [--images 4000] [--workers 1 2] [--epochs 3] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

PLAN = [(224, (0.08, 1.0), (3 / 4, 4 / 3))] * 2


def per_image_costs(shards: Path, n: int = 1024, rounds: int = 5) -> dict:
    """{part: (baseline us/image, ours us/image)}: tar records and crop boxes, medians of `rounds`."""
    from ssl_aug.data.crop_decode import crop_plan, image_generator, sample_boxes, sample_boxes_batch
    from ssl_aug.data.shard_read import _members_by_tarfile, read_index, tar_members

    idx = read_index(shards)
    blobs = []
    for s in range(len(idx.names)):
        data, lo = idx.path(s).read_bytes(), idx.offsets[s]
        blobs += [data[a:b] for a, b in zip(idx.starts[lo:lo + idx.counts[s]], idx.ends[lo:lo + idx.counts[s]])]
        if len(blobs) >= n:
            break
    blobs = blobs[:n]
    k = len(blobs)
    plan = crop_plan(PLAN)
    dims = [(300 + i % 200, 250 + i % 150) for i in range(256)]
    widths, heights = torch.tensor([w for w, _ in dims]), torch.tensor([h for _, h in dims])

    def per(fn, count):
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) / count * 1e6)
        return statistics.median(times)

    return {
        "tar records of one sample (tarfile -> direct ustar reader)": (
            per(lambda: [_members_by_tarfile(b) for b in blobs], k), per(lambda: [tar_members(b) for b in blobs], k)),
        "crop boxes, 2 views (per image -> per batch of 256)": (
            per(lambda: [sample_boxes(w, h, plan, image_generator(0, 0, i)) for i, (w, h) in enumerate(dims)], 256),
            per(lambda: sample_boxes_batch(widths, heights, plan, [image_generator(0, 0, i) for i in range(256)]),
                256)),
    }


def _peak_pss(fn) -> tuple[object, float]:
    """(fn(), peak PSS in MB of this process and its children while fn ran, sampled every 0.2 s)."""
    from bench_data import _tree_rss_mb

    peak, done = [0.0], threading.Event()

    def poll():
        while not done.is_set():
            peak[0] = max(peak[0], _tree_rss_mb(os.getpid()))
            done.wait(0.2)

    th = threading.Thread(target=poll)
    th.start()
    try:
        out = fn()
    finally:
        done.set()
        th.join()
    return out, peak[0]


def feed_rate(shards: Path, workers: int, epochs: int, decode: str, ahead: bool, batch: int = 256) -> float:
    """images/s over `epochs` whole epochs (from the first request on, epoch boundaries included)."""
    from ssl_aug.data.stream import ShardCropSource

    class HostOnly(ShardCropSource):  # the bytes reach the training process; the device would decode them
        def _device_decode(self, ids, datas, boxes, sizes):
            return [], []

    src = (HostOnly if decode == "device" else ShardCropSource)(shards, PLAN, batch, workers=workers, decode=decode,
                                                                verbose=False)
    n, t0 = 0, time.perf_counter()
    for e in range(epochs):
        if not ahead:
            src.close()
        src.set_epoch(e)
        n += sum(len(ids) for ids, _ in src)
    rate = n / (time.perf_counter() - t0)
    src.close()
    return rate


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=4000)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    from bench_data import make_tree

    from ssl_aug.benchmarks import markdown_table, update_benchmarks_md
    from ssl_aug.data.shard_pack import pack_shards

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="ssl_aug_bench_feed_") as tmp:
        kb = make_tree(Path(tmp) / "tree", args.images)
        shards = Path(tmp) / "shards"
        pack_shards(Path(tmp) / "tree", shards, shard_size=250, workers=2, verbose=False)
        costs = per_image_costs(shards, rounds=args.rounds + 2)
        load = os.getloadavg()[0]
        cells = [("device", w) for w in args.workers] + [("cpu", max(args.workers))]  # CPU decode: most workers
        runs = {(c, ahead): [] for c in cells for ahead in (False, True)}
        for _ in range(args.rounds):
            for (decode, w), ahead in runs:
                runs[((decode, w), ahead)].append(_peak_pss(lambda: feed_rate(shards, w, args.epochs, decode, ahead)))
    rows_cost = [[k, f"{a:.1f}", f"{b:.1f}", f"{a / b:.1f}x"] for k, (a, b) in costs.items()]
    rows_feed = []
    for decode, w in cells:
        (r0, m0), (r1, m1) = ([statistics.median(x[i] for x in runs[((decode, w), ahead)]) for i in (0, 1)]
                              for ahead in (False, True))
        what = ("read + shuffle + boxes, bytes to the training process (device decode)" if decode == "device"
                else "read + shuffle + boxes + decode + 2 crops of 224 in the workers (CPU decode)")
        rows_feed.append([what, w, f"{r0:,.0f}", f"{r1:,.0f}", f"{r1 / r0:.2f}", f"{m0:,.0f} / {m1:,.0f}"])
    body = (markdown_table(["per image", "baseline (us)", "ours (us)", "speed-up"], rows_cost) + "\n\n"
            + markdown_table(["feed", "workers", "epoch-at-a-time start (img/s)", "next epoch started ahead (img/s)",
                              "ratio", "peak PSS MB (start / ahead)"], rows_feed) + "\n\n"
            + f"{args.images} generated JPEGs (mean {kb:.0f} KB, 200-500 px, 100 classes) in shards of 250; batches "
            f"of 256, {args.epochs} whole epochs per measurement ({args.images // 256} batches each, epoch boundaries "
            f"included), median of {args.rounds} interleaved rounds; peak PSS of the process tree sampled every 0.2 s. "
            f"1-minute load average before the feed rounds: {load:.1f} on {os.cpu_count()} cores. On the GPU the "
            "training process decodes each fed batch with nvjpeg (the device check measures that part); the feed "
            "bounds it from above.")
    print(body)
    if not args.no_write:
        update_benchmarks_md("feed", "Feeding the device decoder: workers, tar records, crop boxes, epoch starts", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
