"""`ssl-aug bench views` / `python eval/bench_views.py`: input images/s of the view pipelines, side by
side in one process (interleaved rounds, medians): torchvision v2 per sample on PIL (the DataLoader
path), stock kornia AugmentationSequential with the same recipe (best of its two crop modes), and
ssl_aug MultiView exact and fast. All views of an image count once. Writes BENCHMARKS.md#views."""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "4294967296", "MALLOC_TRIM_THRESHOLD_": "17179869184",
              "MALLOC_TOP_PAD_": "1073741824"}

# name: (preset, preset kwargs, batch, input side, edit)
SETTINGS = {
    "s32": ("simclr_cifar", {}, 512, 32, None),
    "s96": ("simclr_cifar", {"size": 96}, 512, 96, None),
    # no blur: torchvision's 23x23 blur on PIL runs at a few images/s and would dominate the ratio
    "s224": ("simclr_imagenet", {"size": 224}, 64, 256, "no_blur"),
    "swav32": ("swav_multicrop", {}, 512, 32, None),
}
TARGETS = {  # GUIDE §5: ratio to torchvision-PIL (exact, fast); both >= 3x stock kornia
    "s32": (15, 40), "s96": (3.5, 12), "s224": (2, 6), "swav32": (30, 70)}


def load_images(n: int, side: int, data_root: str | None) -> tuple[np.ndarray, str]:
    """n HWC uint8 images of side x side: CIFAR-10 test images (bilinearly resized if side != 32) when
    `data_root`/cifar10 exists, else uniform noise."""
    src = "uniform noise (no CIFAR-10 found)"
    x = None
    if data_root and (Path(data_root) / "cifar10" / "cifar10_test.npz").exists():
        x = np.load(Path(data_root) / "cifar10" / "cifar10_test.npz")["x"][:n]
        src = "CIFAR-10 test images"
    if x is None:
        x = np.random.default_rng(0).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    if side != 32:
        t = torch.from_numpy(x).permute(0, 3, 1, 2).float()
        t = torch.nn.functional.interpolate(t, size=(side, side), mode="bilinear", align_corners=False)
        x = t.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
        src += f", resized 32->{side}"
    return x, src


def torchvision_pipeline(spec):
    """torchvision v2 Compose of one view, on a PIL image -> normalised float tensor."""
    from torchvision.transforms import v2
    cj = spec.color_jitter
    t = [v2.RandomResizedCrop(spec.size, scale=spec.scale, ratio=spec.ratio),
         v2.RandomHorizontalFlip(spec.flip_p)]
    if cj.active:
        t.append(v2.RandomApply([v2.ColorJitter(cj.brightness, cj.contrast, cj.saturation, cj.hue)], p=cj.p))
    if spec.grayscale_p > 0:
        t.append(v2.RandomGrayscale(spec.grayscale_p))
    if spec.blur.p > 0:
        t.append(v2.RandomApply([v2.GaussianBlur(spec.blur.kernel_size, spec.blur.sigma)], p=spec.blur.p))
    if spec.solarize.p > 0:
        t.append(v2.RandomSolarize(round(255 * spec.solarize.threshold), p=spec.solarize.p))
    t += [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(spec.mean, spec.std)]
    return v2.Compose(t)


def kornia_pipeline(spec, cropping_mode: str):
    """Stock kornia AugmentationSequential of one view with the same recipe, on float [0, 1] batches."""
    import kornia.augmentation as K
    cj = spec.color_jitter
    t = [K.RandomResizedCrop((spec.size, spec.size), scale=spec.scale, ratio=spec.ratio,
                             cropping_mode=cropping_mode),
         K.RandomHorizontalFlip(p=spec.flip_p)]
    if cj.active:
        t.append(K.ColorJitter(cj.brightness, cj.contrast, cj.saturation, cj.hue, p=cj.p))
    if spec.grayscale_p > 0:
        t.append(K.RandomGrayscale(p=spec.grayscale_p))
    if spec.blur.p > 0:
        t.append(K.RandomGaussianBlur((spec.blur.kernel_size,) * 2, spec.blur.sigma, p=spec.blur.p))
    if spec.solarize.p > 0:
        t.append(K.RandomSolarize(thresholds=0.0, additions=0.0, p=spec.solarize.p))
    t.append(K.Normalize(torch.tensor(spec.mean), torch.tensor(spec.std)))
    return K.AugmentationSequential(*t)


def build_pipelines(setting: str, x_hwc: np.ndarray) -> dict:
    """name -> zero-argument callable making all views of the batch."""
    from PIL import Image

    from ssl_aug.augment import MultiView, edit_specs, get_preset
    preset, kw, _, _, edit = SETTINGS[setting]
    specs, counts = get_preset(preset, **kw)
    specs = edit_specs(specs, edit) if edit else specs
    views = [s for s, c in zip(specs, counts) for _ in range(c)]
    tv = [torchvision_pipeline(s) for s in specs]
    tv_views = [tv[i] for i, c in enumerate(counts) for _ in range(c)]
    x = torch.from_numpy(x_hwc).permute(0, 3, 1, 2).contiguous()

    def torchvision_pil():
        out = [[] for _ in views]
        for img in x_hwc:  # the DataLoader path: dataset -> PIL -> per-view transforms -> collate
            pil = Image.fromarray(img)
            for v, t in enumerate(tv_views):
                out[v].append(t(pil))
        return [torch.stack(o) for o in out]

    kornia = {m: [kornia_pipeline(s, m) for s in views] for m in ("slice", "resample")}

    def stock_kornia(mode):
        def run():
            xf = x.float().div_(255.0)
            return [aug(xf) for aug in kornia[mode]]
        return run

    gen = torch.Generator().manual_seed(0)
    exact, fast = MultiView(specs, counts, mode="exact"), MultiView(specs, counts, mode="fast")
    return {"torchvision v2 per sample (PIL)": torchvision_pil,
            "kornia (slice crop)": stock_kornia("slice"), "kornia (resample crop)": stock_kornia("resample"),
            "ssl_aug exact": lambda: exact(x, gen), "ssl_aug fast": lambda: fast(x, gen)}


def measure(fns: dict, rounds: int, clock=time.perf_counter) -> dict[str, float]:
    """Median seconds per call over `rounds` interleaved rounds (one warm-up call each). `clock`:
    time.perf_counter (wall) or time.process_time (this process's CPU time: steadier on a machine other
    jobs load, comparable across pipelines with one thread)."""
    for f in fns.values():
        f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            t0 = clock()
            f()
            times[k].append(clock() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def fast_vs_exact(x_hwc: np.ndarray) -> tuple[float, float, float]:
    """Mean, 99th percentile and max |fast - exact| over the s32 views of the batch (same parameters,
    before normalisation, [0, 1] scale)."""
    from ssl_aug.augment import MultiView, get_preset
    specs, counts = get_preset("simclr_cifar")
    x = torch.from_numpy(x_hwc).permute(0, 3, 1, 2).contiguous()
    ex, fa = MultiView(specs, counts, mode="exact"), MultiView(specs, counts, mode="fast")
    p = ex.sample(x, torch.Generator().manual_seed(1))
    d = (torch.cat(fa.apply(x, p, normalize=False)) - torch.cat(ex.apply(x, p, normalize=False))).abs().flatten()
    return d.mean().item(), d[:: max(1, d.numel() // 1_000_000)].quantile(0.99).item(), d.max().item()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ssl-aug bench views", description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--settings", default=",".join(SETTINGS), help=f"comma list of {', '.join(SETTINGS)}")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (median reported)")
    ap.add_argument("--quick", action="store_true", help="smoke run: batch/8, 2 rounds, no BENCHMARKS.md")
    ap.add_argument("--data", default=os.environ.get("SSL_AUG_DATA"), help="folder holding cifar10/ (SSL_AUG_DATA)")
    ap.add_argument("--output", default="BENCHMARKS.md", help="file whose views section is rewritten")
    ap.add_argument("--no-write", action="store_true", help="print only")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall time, or this process's CPU time (steadier on a loaded machine; use --threads 1)")
    ap.add_argument("--no-malloc-tune", action="store_true",
                    help="keep glibc's default malloc (otherwise re-exec with high mmap/trim thresholds)")
    args = ap.parse_args(argv)
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    bad = [s for s in settings if s not in SETTINGS]
    if bad:
        from ssl_aug.errors import SslAugError
        raise SslAugError(f"bench views: unknown setting {bad[0]!r}; allowed: {', '.join(SETTINGS)}")
    if not args.no_malloc_tune and any(os.environ.get(k) != v for k, v in MALLOC_ENV.items()):
        # glibc reads these only at process start: re-exec this benchmark with them set
        env = {**os.environ, **MALLOC_ENV}
        cmd = [sys.executable, "-m", "ssl_aug.benchmarks.views"] + (sys.argv[1:] if argv is None else list(argv))
        sys.stdout.flush()
        os.execve(sys.executable, cmd, env)
    if args.threads:
        torch.set_num_threads(args.threads)
    load0 = os.getloadavg()[0]
    malloc = "default glibc malloc" if args.no_malloc_tune else (
        "glibc " + ", ".join(f"{k}={v}" for k, v in MALLOC_ENV.items()))
    rounds = 2 if args.quick else args.rounds
    from ssl_aug.benchmarks import markdown_table, update_benchmarks_md
    results: dict[str, dict[str, float]] = {}
    source = ""
    for s in settings:
        _, _, batch, side, _ = SETTINGS[s]
        batch = max(8, batch // 8) if args.quick else batch
        x, source = load_images(batch, side, args.data)
        secs = measure(build_pipelines(s, x), rounds, time.process_time if args.clock == "cpu" else time.perf_counter)
        results[s] = {k: batch / v for k, v in secs.items()}
        print(f"{s}: " + ", ".join(f"{k} {v:,.0f}/s" for k, v in results[s].items()), flush=True)
    names = list(next(iter(results.values())))
    header = ["pipeline"] + [f"{s} (B={max(8, SETTINGS[s][2] // 8) if args.quick else SETTINGS[s][2]})"
                             for s in settings]
    rows = [[k] + [f"{results[s][k]:,.0f}" for s in settings] for k in names]
    table = markdown_table(header, rows)
    ratio_rows = []
    for mode, ti in (("exact", 0), ("fast", 1)):
        r_tv = [results[s][f"ssl_aug {mode}"] / results[s]["torchvision v2 per sample (PIL)"] for s in settings]
        r_k = [results[s][f"ssl_aug {mode}"] / max(results[s]["kornia (slice crop)"],
                                                    results[s]["kornia (resample crop)"]) for s in settings]
        ratio_rows.append([f"{mode} / torchvision-PIL"] + [f"{r:.1f}x (target {TARGETS[s][ti]}x)"
                                                           for r, s in zip(r_tv, settings)])
        ratio_rows.append([f"{mode} / best stock kornia"] + [f"{r:.1f}x (target 3x)" for r in r_k])
    ratios = markdown_table(["ratio"] + settings, ratio_rows)
    x32, _ = load_images(64 if args.quick else 512, 32, args.data)
    mean_d, p99_d, max_d = fast_vs_exact(x32)
    load1 = os.getloadavg()[0]
    per = "CPU-time" if args.clock == "cpu" else "wall-time"
    body = (f"Input images/s by {per} (all views of an image counted once), median of {rounds} interleaved rounds "
            f"after one warm-up, one process, {torch.get_num_threads()} torch threads, {malloc}; "
            f"1-min load average {load0:.1f} at start, {load1:.1f} at end (other jobs on the machine "
            f"inflate absolute figures; ratios are measured side by side). "
            f"Images: {source}. Settings: s32 = simclr_cifar 2x32 from 32 px; s96 = simclr_cifar recipe at "
            f"96 px from 96 px inputs (CIFAR upsampled); s224 = simclr_imagenet without blur, 2x224 from 256 px; "
            f"swav32 = swav_multicrop 2x32 + 6x16 from 32 px. torchvision runs the per-sample Compose on PIL "
            f"images (PIL resize antialiases); kornia and ssl_aug get uint8 tensors (conversion timed).\n\n"
            f"{table}\n\n{ratios}\n\n"
            f"Fast mode vs exact (same parameters, s32 recipe, CIFAR-10, [0, 1] scale before normalisation): "
            f"mean |diff| {mean_d:.4f}, p99 {p99_d:.3f}, max {max_d:.3f}. Exact mode vs torchvision v2 functional "
            f"ops per image: <= 1e-4 (tests/test_augment.py).")
    print()
    print(table)
    print()
    print(ratios)
    print(f"\nfast vs exact: mean {mean_d:.4f} p99 {p99_d:.3f} max {max_d:.3f}")
    if not (args.quick or args.no_write):
        path = update_benchmarks_md("views", "Views: batched augmentation throughput", body, args.output)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
