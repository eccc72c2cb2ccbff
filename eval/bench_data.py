"""Streaming from shards of encoded images vs the torchvision ImageFolder + PIL path; writes the
data section of BENCHMARKS.md.

Generates an ImageNet-like JPEG tree under a temporary folder (100 classes, sides 200-500 px, about
100 KB each; never committed), packs it into tar shards, then measures with the same number of
DataLoader workers, interleaved rounds in one process:
  - decode alone (PIL open + RGB load per file: the libjpeg floor);
  - ours: decode + random-resized crop from the whole image (2 views at 224, 2 views at 96);
  - ours: the full SimCLR views (crops from the workers, colour jitter / grayscale / blur on the
    training device, here the CPU of the main process);
  - torchvision ImageFolder + RandomResizedCrop / flip / ColorJitter / RandomGrayscale PIL transforms
    (2 views, the lightly / solo-learn path);
then peak memory (PSS of the whole process tree) of a short SimCLR training run streaming the shards at each
tree size, and classes covered per batch of 256.

Usage: python eval/bench_data.py [--images 5000 20000] [--workers 2] [--batches 6] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import numpy as np  # noqa: E402
import torch  # noqa: E402

SIMCLR = dict(views=2, size=224, scale=[0.08, 1.0], flip_p=0.5, grayscale_p=0.2,
              color_jitter={"brightness": 0.8, "contrast": 0.8, "saturation": 0.8, "hue": 0.2, "p": 0.8},
              blur={"p": 0.5, "kernel_size": 23, "sigma": [0.1, 2.0]})


def _make_images(root: Path, ids: list[int], classes: int, seed: int) -> int:
    """Write the JPEGs numbered `ids` (each from its own seeded generator); returns their total bytes."""
    from PIL import Image

    total = 0
    for i in ids:
        rng = np.random.default_rng([seed, i])
        d = root / f"n{i % classes:04d}"
        d.mkdir(parents=True, exist_ok=True)
        w, h = (int(v) for v in rng.integers(200, 501, 2))
        yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
        base = np.stack([127 + 90 * np.sin(2 * np.pi * (rng.uniform(0.5, 4) * xx + rng.uniform(0.5, 4) * yy)
                                            + rng.uniform(0, 6)) for _ in range(3)], -1)
        img = (base + rng.normal(0, 30, (h, w, 3))).clip(0, 255).astype(np.uint8)
        p = d / f"{i:06d}.jpg"
        Image.fromarray(img).save(p, quality=90)
        total += p.stat().st_size
    return total


def make_tree(root: Path, n: int, classes: int = 100, seed: int = 0, workers: int = 2) -> float:
    """n JPEGs in `classes` folders: smooth colour fields + texture noise, sides 200-500 px, quality 90
    (about 100 KB), written by `workers` processes. Returns the mean file size in KB."""
    from concurrent.futures import ProcessPoolExecutor

    parts = [list(range(k, n, workers)) for k in range(workers)]
    with ProcessPoolExecutor(workers) as pool:
        total = sum(pool.map(_make_images, [root] * workers, parts, [classes] * workers, [seed] * workers))
    return total / n / 1024


class _Files(torch.utils.data.Dataset):
    def __init__(self, files):
        self.files = files

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        from PIL import Image

        with Image.open(self.files[i]) as im:
            return int(np.asarray(im.convert("RGB")).sum(dtype=np.int64))  # decoded, nothing else


def _pil_simclr(size: int):
    from torchvision import transforms as T

    t = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(),
                   T.RandomApply([T.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8), T.RandomGrayscale(0.2),
                   T.RandomApply([T.GaussianBlur(23, (0.1, 2.0))], p=0.5), T.ToTensor()])
    return lambda im: (t(im), t(im))


def _consume(loader, batches: int, per_batch) -> float:
    """images/s over `batches` batches after the first (worker start-up excluded)."""
    it = iter(loader)
    next(it)
    t0, n = time.perf_counter(), 0
    for _ in range(batches):
        n += per_batch(next(it))
    return n / (time.perf_counter() - t0)


def throughput(tree: Path, shards: Path, workers: int, batches: int, batch: int = 64) -> dict:
    from torchvision.datasets import ImageFolder

    from ssl_aug.augment.crop_views import views_from_crops
    from ssl_aug.augment.recipe import build_views
    from ssl_aug.data.stream import ShardCropSource

    files = sorted(str(p) for p in tree.rglob("*.jpg"))
    g = torch.Generator().manual_seed(0)
    perm = [files[i] for i in torch.randperm(len(files), generator=g)]
    dl = lambda ds: torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=workers,  # noqa: E731
                                                shuffle=False, persistent_workers=False)
    fns = {"decode alone (PIL, per file)": lambda: _consume(dl(_Files(perm)), batches, lambda b: len(b))}
    for size in (224, 96):
        plan = [(size, (0.08, 1.0), (3 / 4, 4 / 3))] * 2
        mv = build_views(dict(SIMCLR, size=size, blur=dict(SIMCLR["blur"], kernel_size=23 if size == 224 else 9)))

        def ours(plan=plan):
            src = ShardCropSource(shards, plan, batch, workers=workers, verbose=False)
            return _consume(src, batches, lambda b: b[0].shape[0])

        def ours_views(plan=plan, mv=mv):
            src = ShardCropSource(shards, plan, batch, workers=workers, verbose=False)
            gen = torch.Generator().manual_seed(1)
            return _consume(src, batches, lambda b: views_from_crops(mv, b[1], gen)[0].shape[0])

        def tv(size=size):
            ds = ImageFolder(str(tree), transform=_pil_simclr(size))
            loader = torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=workers, shuffle=True,
                                                 generator=torch.Generator().manual_seed(0))
            return _consume(loader, batches, lambda b: b[1].shape[0])

        fns[f"ours: decode + random-resized crop, 2 x {size}"] = ours
        fns[f"ours: + SimCLR views (device = this CPU), 2 x {size}"] = ours_views
        fns[f"torchvision ImageFolder + PIL SimCLR, 2 x {size}"] = tv
    rounds = {k: [] for k in fns}
    for _ in range(3):
        for k, fn in fns.items():
            rounds[k].append(fn())
    return {k: float(np.median(v)) for k, v in rounds.items()}


def _tree_rss_mb(pid: int) -> float:
    """Proportional resident memory (PSS: a page shared by k processes counts 1/k) of a process and all
    its descendants (MB), from /proc/<pid>/smaps_rollup; VmRSS where that file is missing."""
    total, todo = 0, [pid]
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(d.name))
            except (OSError, IndexError, ValueError):
                pass
    while todo:
        p = todo.pop()
        try:
            rollup = Path(f"/proc/{p}/smaps_rollup")
            key, text = ("Pss:", rollup.read_text()) if rollup.exists() else ("VmRSS:", Path(f"/proc/{p}/status").read_text())
            total += next((int(line.split()[1]) for line in text.splitlines() if line.startswith(key)), 0)
        except OSError:
            pass
        todo += children.get(p, [])
    return total / 1024


def training_rss(shards: Path, workdir: Path, workers: int, steps: int, backbone: str = "resnet18") -> float:
    """Peak RSS (MB, process tree) of `ssl-aug train` streaming SimCLR views from `shards` (`backbone`,
    2 x 96 px, batch 64, `steps` steps, no evaluation)."""
    workdir.mkdir(parents=True, exist_ok=True)
    recipe = workdir / "rss.toml"
    recipe.write_text(f"""seed = 0
device = "cpu"
[data]
name = "shards"
root = {json.dumps(str(shards))}
options = {{ workers = {workers} }}
[model]
backbone = "{backbone}"
[method]
name = "simclr"
[augment]
views = 2
size = 96
[train]
epochs = 1
max_steps = {steps}
batch_size = 64
log_every = 1
[eval]
final_knn = false
""")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    cmd = [sys.executable, "-m", "ssl_aug", "train", str(recipe), f"output_dir={json.dumps(str(workdir / 'run'))}",
           "--no-progress"]
    err, peak = run_with_peak_pss(cmd, env)[1:]
    if err is not None:
        raise RuntimeError(f"training run failed: {err[-2000:]}")
    return peak


def run_with_peak_pss(cmd: list[str], env: dict | None = None) -> tuple[str, str | None, float]:
    """Run `cmd`, sampling the PSS of its process tree every 0.1 s -> (stdout, stderr when it failed else
    None, peak MB)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0.0]

    def poll():
        while proc.poll() is None:
            peak[0] = max(peak[0], _tree_rss_mb(proc.pid))
            time.sleep(0.1)

    th = threading.Thread(target=poll)
    th.start()
    out, err = proc.communicate()
    th.join()
    return out, (err if proc.returncode != 0 else None), peak[0]


def classes_per_batch(shards: Path, batch: int = 256) -> float:
    from ssl_aug.data.stream import ShardCropSource

    src = ShardCropSource(shards, [(8, (0.08, 1.0), (3 / 4, 4 / 3))], batch, workers=0, verbose=False)
    counts = [len(set(src.labels[ids].tolist())) for ids, _ in src]
    return float(np.mean(counts)) if counts else float("nan")


def against_targets(tput: dict, rss: list[tuple[int, float, float]]) -> str:
    """One sentence comparing the measured figures with the targets (rss: (images, peak MB, classes per batch))."""
    floor = tput["decode alone (PIL, per file)"]
    crop = [tput[f"ours: decode + random-resized crop, 2 x {s}"] / floor for s in (224, 96)]
    views = [tput[f"ours: + SimCLR views (device = this CPU), 2 x {s}"]
             / tput[f"torchvision ImageFolder + PIL SimCLR, 2 x {s}"] for s in (224, 96)]
    text = (f"Against the targets: decode + random-resized crop runs at {crop[0]:.2f} (224) and {crop[1]:.2f} (96) "
            f"of decode alone (target >= 0.70); the full SimCLR views at {views[0]:.1f}x (224) and "
            f"{views[1]:.1f}x (96) "
            f"the torchvision PIL path at equal workers (target >= 2x); a batch of 256 covers "
            f"{min(r[2] for r in rss):.1f} or more of 100 classes (target >= 90)")
    if len(rss) > 1:
        text += (f"; peak memory grows {rss[-1][1] - rss[0][1]:.0f} MB from {rss[0][0]} to {rss[-1][0]} images "
                 f"(target <= 100 MB from 5k to 20k)")
    return text + "."


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, nargs="+", default=[5000, 20000])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batches", type=int, default=6, help="timed batches of 64 per measurement")
    ap.add_argument("--rss-steps", type=int, default=20)
    ap.add_argument("--backbone", default="resnet18", help="backbone of the RSS training runs")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    from ssl_aug.data.shard_pack import pack_shards

    torch.set_num_threads(1)
    rows_rss, rss_figures, notes, tput, loads = [], [], [], None, []
    with tempfile.TemporaryDirectory(prefix="ssl_aug_bench_data_") as tmp:
        for n in args.images:
            tree, shards = Path(tmp) / f"tree{n}", Path(tmp) / f"shards{n}"
            t0 = time.perf_counter()
            kb = make_tree(tree, n, workers=args.workers)
            t1 = time.perf_counter()
            pack_shards(tree, shards, shard_size=500, workers=args.workers, verbose=False)
            t2 = time.perf_counter()
            notes.append(f"{n} images: mean file {kb:.0f} KB, generated in {t1 - t0:.0f} s, packed in {t2 - t1:.0f} s "
                         f"({n / (t2 - t1):.0f} img/s, {args.workers} processes)")
            if tput is None:
                loads.append(os.getloadavg()[0])
                tput = throughput(tree, shards, args.workers, args.batches)
                loads.append(os.getloadavg()[0])
                for k, v in tput.items():
                    print(f"{k}: {v:.0f} img/s", flush=True)
            rss = training_rss(shards, Path(tmp) / f"rss{n}", args.workers, args.rss_steps, args.backbone)
            rss_figures.append((n, rss, classes_per_batch(shards)))
            rows_rss.append([n, f"{rss:.0f}", f"{rss_figures[-1][2]:.1f}"])
            print(f"{n} images: peak RSS {rss:.0f} MB", flush=True)
    floor = tput["decode alone (PIL, per file)"]
    rows = [[k, f"{v:.0f}", f"{v / floor:.2f}"] for k, v in tput.items()]
    from ssl_aug.benchmarks import markdown_table, update_benchmarks_md

    body = (markdown_table(["path", "images/s (median of 3)", "x decode alone"], rows) + "\n\n"
            + markdown_table(["images in the tree", "peak PSS of a training run (MB, process tree)",
                              "classes per batch of 256 (of 100)"], rows_rss) + "\n\n"
            + f"{args.workers} DataLoader workers everywhere; batches of 64, {args.batches} timed batches after the "
            f"first, 3 interleaved rounds. The SimCLR views of our path run in the main process (the training "
            f"device is this CPU), on top of the workers. Training run: {args.backbone}, SimCLR 2 x 96, batch 64, "
            f"{args.rss_steps} steps. " + "; ".join(notes) + f". 1-minute load average before / after the "
            f"throughput rounds: {loads[0]:.1f} / {loads[1]:.1f} on {os.cpu_count()} cores (above the core count the "
            "machine was shared: absolute figures drop, ratios stay side by side). "
            + against_targets(tput, rss_figures))
    print(body)
    if not args.no_write:
        update_benchmarks_md("data", "Streaming shards of encoded images vs ImageFolder + PIL", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
