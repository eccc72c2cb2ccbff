"""GPU check of streaming from shards: our decode + crops + SimCLR views on the device beside NVIDIA
DALI's decode + random-resized crop + SimCLR colour pipeline on the same shards, in one run.

Ours: ShardCropSource(decode="device") (workers read and shuffle encoded bytes; one batched
`torchvision.io.decode_jpeg(..., device="cuda")` per batch, crops cut with roi_align on the GPU) +
views_from_crops (flip, colour jitter, grayscale, blur on the GPU).
DALI (when `nvidia-dali` is importable): readers.webdataset -> decoders.image_random_crop (mixed,
ROI decode) per view -> resize -> colour twist with probability 0.8 -> grayscale with probability
0.2 (saturation 0) -> Gaussian blur with probability 0.5 -> crop_mirror_normalize (flip 0.5).

Usage (on a CUDA machine):
  python eval/bench_data_gpu.py --images 20000 [--batch 256] [--batches 30] [--workers 8] [--size 224 96]
  python eval/bench_data_gpu.py --shards PACKED_FOLDER ...
  python eval/bench_data_gpu.py --device cpu ...   (both paths on the CPU; DALI's CPU graph) [--write]
Prints images/s of each path (median of 3 interleaved rounds, first batch excluded), and of the training
process's share alone (one batch of bytes in memory: decode, decode + crops).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def build_dali_simclr(shards: Path, batch_size: int, size: int = 224, views: int = 2, num_threads: int = 8,
                      device_id: int | None = 0, seed: int = 0, shard_id: int = 0, num_shards: int = 1):
    """A DALI iterator over a `--format shards` pack yielding {"view0": (B,3,size,size) float, ...} per batch:
    SimCLR views (jitter 0.8/0.8/0.8/0.2 p=0.8, grayscale p=0.2, blur p=0.5 kernel 23 sigma 0.1-2, flip
    0.5, ImageNet normalisation), on cuda:device_id (ROI decode with nvjpeg), or all on the CPU with
    device_id=None (the same graph; what a machine without a GPU can check)."""
    from nvidia.dali import fn, pipeline_def, types
    from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

    tars = sorted(str(p) for p in Path(shards).glob("shard-*.tar"))
    on_gpu = device_id is not None

    def coin(p):
        return fn.cast(fn.random.coin_flip(probability=p), dtype=types.FLOAT)

    def view(jpegs):
        img = fn.decoders.image_random_crop(jpegs, device="mixed" if on_gpu else "cpu", output_type=types.RGB,
                                            random_area=[0.08, 1.0], random_aspect_ratio=[0.75, 4 / 3],
                                            num_attempts=10)
        img = fn.resize(img, resize_x=size, resize_y=size, interp_type=types.INTERP_LINEAR, antialias=True)
        on = coin(0.8)  # colour jitter with probability 0.8: factors pulled to 1 when off
        b = 1 + on * (fn.random.uniform(range=[0.2, 1.8]) - 1)
        c = 1 + on * (fn.random.uniform(range=[0.2, 1.8]) - 1)
        s = 1 + on * (fn.random.uniform(range=[0.2, 1.8]) - 1)
        h = on * fn.random.uniform(range=[-0.2 * 180, 0.2 * 180])  # degrees
        img = fn.color_twist(img, brightness=b, contrast=c, saturation=s, hue=h)
        img = fn.hsv(img, saturation=1 - coin(0.2))  # grayscale with probability 0.2
        blur = coin(0.5).gpu() if on_gpu else coin(0.5)  # arithmetic with the image: the coin goes where it is
        blurred = fn.gaussian_blur(img, window_size=23, sigma=fn.random.uniform(range=[0.1, 2.0]))
        img = fn.cast(blur * fn.cast(blurred, dtype=types.FLOAT) + (1 - blur) * fn.cast(img, dtype=types.FLOAT),
                      dtype=types.UINT8)
        return fn.crop_mirror_normalize(img, dtype=types.FLOAT, output_layout="CHW",
                                        mean=[m * 255 for m in MEAN], std=[s_ * 255 for s_ in STD],
                                        mirror=fn.random.coin_flip(probability=0.5))

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id, seed=seed)
    def pipe():
        # the images only: a label is its .cls text (ragged bytes), which the views do not need
        jpegs = fn.readers.webdataset(paths=tars, ext=["jpg"], missing_component_behavior="error",
                                      random_shuffle=True, initial_fill=1024, shard_id=shard_id,
                                      num_shards=num_shards, name="Reader")
        return tuple(view(jpegs) for _ in range(views))

    p = pipe()
    p.build()
    return DALIGenericIterator(p, [f"view{i}" for i in range(views)], reader_name="Reader",
                               last_batch_policy=LastBatchPolicy.DROP, auto_reset=True)


def ours(shards: Path, batch: int, workers: int, size: int, views: int = 2, device: str = "cuda"):
    """Endless SimCLR view batches from `shards`: decoded on `device` (nvjpeg on CUDA; the CPU decoders in
    the workers otherwise), crops and colour views on `device`."""
    from bench_data import SIMCLR

    from ssl_aug.augment.crop_views import views_from_crops
    from ssl_aug.augment.recipe import build_views
    from ssl_aug.data.stream import ShardCropSource

    cuda = torch.device(device).type == "cuda"
    mv = build_views(dict(SIMCLR, size=size, views=views), dtype=torch.bfloat16 if cuda else torch.float32)
    src = ShardCropSource(shards, [(size, (0.08, 1.0), (3 / 4, 4 / 3))] * views, batch, workers=workers,
                          device=device, decode="device" if cuda else "cpu", verbose=False)
    gen = torch.Generator().manual_seed(0)
    while True:
        for _, crops in src:
            yield views_from_crops(mv, crops, gen)
        src.set_epoch(src.epoch + 1)


def _endless(loader):
    """Batches across epochs (a DALI iterator with auto_reset ends each epoch with StopIteration)."""
    while True:
        yield from loader


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def rate(it, batch: int, batches: int, device: str = "cuda") -> float:
    next(it)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(batches):
        out = next(it)
    if isinstance(out, list) and out and isinstance(out[0], dict):  # DALI yields [dict]
        out[0]["view0"].sum().item()
    _sync(device)
    return batch * batches / (time.perf_counter() - t0)


def side_by_side(shards: Path, batch: int, batches: int, workers: int, size: int, device: str = "cuda",
                 rounds: int = 3) -> tuple[dict, list[str]]:
    """{path: median images/s over `rounds` interleaved rounds} for ours and, where importable, DALI (on the
    CPU when `device` is: the graph the GPU run builds, checked without one); plus notes on what was skipped."""
    paths = {"ours: decode + crops + SimCLR views on the device": lambda: ours(shards, batch, workers, size,
                                                                               device=device)}
    notes = []
    try:
        import nvidia.dali  # noqa: F401

        cuda = torch.device(device).type == "cuda"
        paths[f"DALI: webdataset + ROI decode + SimCLR colour pipeline{'' if cuda else ' on the CPU'}"] = \
            lambda: _endless(build_dali_simclr(shards, batch, size, num_threads=max(1, workers),
                                               device_id=(torch.device(device).index or 0) if cuda else None))
    except ImportError:
        notes.append("DALI peer skipped (`pip install nvidia-dali-cuda120`)")
    its = {k: f() for k, f in paths.items()}
    results = {k: [] for k in its}
    for _ in range(rounds):
        for k, it in its.items():
            results[k].append(rate(it, batch, batches, device))
    return {k: statistics.median(v) for k, v in results.items()}, notes


def device_check_rows(device, dry: bool, tmp: Path) -> list[list]:
    """The device check's shard-stream rows: a generated ImageNet-like pack streamed by ours and by DALI
    side by side (dry: 48 small-tree images at 64 px on the CPU, one round)."""
    from bench_data import make_tree

    from ssl_aug.data.shard_pack import pack_shards

    n, batch, batches, workers, size = (48, 8, 2, 1, 64) if dry else (4096, 256, 10, 8, 224)
    make_tree(tmp / "stream_tree", n, classes=16 if dry else 100, workers=2)
    pack_shards(tmp / "stream_tree", tmp / "stream_shards", shard_size=max(8, n // 16), workers=2, verbose=False)
    rates, notes = side_by_side(tmp / "stream_shards", batch, batches, workers, size, str(device),
                                rounds=1 if dry else 3)
    target = "" if dry else " (target >= 8,000 img/s at 224 on an H200-class GPU, and >= DALI)"
    rows = [["shard stream", f"{k}, 2x{size}, batch {batch}, {workers} workers", f"{r:,.0f} img/s{target}", "ok"]
            for k, r in rates.items()]
    parts = decode_alone(tmp / "stream_shards", batch, size, str(device), repeats=2 if dry else 10)
    rows += [["shard stream", f"{k}, 2x{size}, batch {batch}, bytes in memory", f"{r:,.0f} img/s", "ok"]
             for k, r in parts.items()]
    return rows + [["shard stream", note, "-", "skip"] for note in notes]


def decode_alone(shards: Path, batch: int, size: int, device: str = "cuda", repeats: int = 10) -> dict:
    """{part: images/s} of the training process's share, one batch of encoded bytes already in memory:
    decode alone (batched decode_jpeg) and decode + crops (decode_crops_device); medians of `repeats`."""
    from ssl_aug.data.crop_decode import crop_plan, decode_crops_device, image_generator, sample_boxes_batch
    from ssl_aug.data.shard_read import iter_rows, read_index
    from torchvision.io import ImageReadMode, decode_jpeg

    idx = read_index(shards)
    rows = []
    for s in range(len(idx.names)):
        lo, hi = idx.offsets[s], idx.offsets[s] + idx.counts[s]
        rows += list(iter_rows(idx.path(s), idx.starts[lo:hi], idx.ends[lo:hi]))
        if len(rows) >= batch:
            break
    rows = rows[:batch]
    datas = [torch.frombuffer(bytearray(r[1]), dtype=torch.uint8) for r in rows]
    plan = crop_plan([(size, (0.08, 1.0), (3 / 4, 4 / 3))] * 2)
    boxes = sample_boxes_batch(torch.tensor([r[3] for r in rows]), torch.tensor([r[4] for r in rows]), plan,
                               [image_generator(0, 0, i) for i in range(len(rows))])
    fns = {"decode alone (batched decode_jpeg)": lambda: decode_jpeg(datas, mode=ImageReadMode.RGB, device=device),
           "decode + crops (decode_crops_device)": lambda: decode_crops_device(datas, boxes, [size, size], device)}
    out = {}
    for k, fn in fns.items():
        fn()
        times = []
        for _ in range(repeats):
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times.append(time.perf_counter() - t0)
        out[k] = len(rows) / statistics.median(times)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=Path, default=None, help="a `--format shards` pack (else one is generated)")
    ap.add_argument("--images", type=int, default=20000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--size", type=int, nargs="+", default=[224])
    ap.add_argument("--device", default="cuda", help="cuda[:N], or cpu: both paths on this machine's CPU")
    ap.add_argument("--write", action="store_true", help="rewrite the stream_peer section of BENCHMARKS.md")
    args = ap.parse_args(argv)
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to measure (--device cpu compares the CPU paths)", file=sys.stderr)
        return 2
    torch.set_num_threads(1 if args.device == "cpu" else torch.get_num_threads())  # the workers use the cores
    rows, notes = [], []
    with tempfile.TemporaryDirectory(prefix="ssl_aug_bench_gpu_") as tmp:
        shards = args.shards
        if shards is None:
            from bench_data import make_tree

            from ssl_aug.data.shard_pack import pack_shards

            make_tree(Path(tmp) / "tree", args.images)
            shards = Path(tmp) / "shards"
            pack_shards(Path(tmp) / "tree", shards, shard_size=500, workers=args.workers, verbose=False)
        for size in args.size:
            results, notes = side_by_side(shards, args.batch, args.batches, args.workers, size, args.device)
            if torch.device(args.device).type == "cuda":
                results.update(decode_alone(shards, args.batch, size, args.device))
            dali = next((v for k, v in results.items() if k.startswith("DALI")), None)
            rows += [[f"2 x {size}", k, f"{v:,.0f}", f"{v / dali:.2f}" if dali else "-"] for k, v in results.items()]
    for note in notes:
        print(note, file=sys.stderr)
    from ssl_aug.benchmarks import markdown_table, update_benchmarks_md

    body = (markdown_table(["views", "path", "images/s (median of 3)", "x DALI"], rows) + "\n\n"
            + f"Batch {args.batch}, {args.workers} DataLoader workers for ours and {args.workers} DALI threads, "
            f"{args.batches} timed batches after the first, 3 interleaved rounds, on {args.device}; the same generated "
            f"JPEG shards ({args.images} images, 200-500 px) and the same SimCLR views (flip, jitter 0.8/0.8/0.8/0.2 "
            "p 0.8, grayscale p 0.2, blur p 0.5 kernel 23). Ours decodes each image once into all its crops (in the "
            "workers on a CPU, with nvjpeg in the training process on a GPU) and makes the views on the device; DALI "
            "decodes only each crop's region (ROI decode) and makes the views in its own pipeline."
            + (" The decode rows: one batch of bytes already in memory." if args.device != "cpu" else ""))
    print(body)
    if args.write:
        update_benchmarks_md("stream_peer", f"Streaming shards beside NVIDIA DALI ({args.device})", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
