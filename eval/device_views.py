"""The device check's view throughput row: ssl_aug's views against torchvision v2 per sample and stock kornia
on the same device (eval/device_check.py)."""

from __future__ import annotations

import statistics
import time

import torch

Row = list  # [check, detail, result, status]


def random_images(n: int, side: int, seed: int = 0) -> torch.Tensor:
    """(n, 3, side, side) seeded random uint8 images."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8, generator=g)


def available(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def check_views_vs_baselines(device: torch.device, sizes) -> list[Row]:
    """Input images/s of the simclr_cifar views: ssl_aug exact vs torchvision v2 per sample on device
    tensors vs stock kornia, on the same device, interleaved rounds, median (a baseline that is not
    installed is a skip row)."""
    from ssl_aug.augment import MultiView, get_preset

    specs, counts = get_preset("simclr_cifar")
    spec = specs[0]
    n = sizes.bench_batch
    x = random_images(n, 32, seed=6).to(device)
    ours = MultiView(specs, counts)
    gen = torch.Generator().manual_seed(0)
    fns = {"ssl_aug exact": lambda: ours(x, gen)}
    rows = []
    if available("torchvision"):
        from torchvision.transforms import v2

        cj = spec.color_jitter
        per_sample = v2.Compose([
            v2.RandomResizedCrop(spec.size, scale=spec.scale, ratio=spec.ratio, antialias=False),
            v2.RandomHorizontalFlip(spec.flip_p),
            v2.RandomApply([v2.ColorJitter(cj.brightness, cj.contrast, cj.saturation, cj.hue)], p=cj.p),
            v2.RandomGrayscale(spec.grayscale_p), v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(spec.mean, spec.std)])
        fns["torchvision v2 per sample"] = lambda: [torch.stack([per_sample(img) for img in x]) for _ in range(2)]
    else:
        rows.append(["views on device", "torchvision v2 per sample", "torchvision is not installed here", "skip"])
    if available("kornia"):
        from ssl_aug.benchmarks.views import kornia_pipeline

        kornia = kornia_pipeline(spec, "resample").to(device)
        fns["stock kornia"] = lambda: [kornia(x.float() / 255) for _ in range(2)]
    else:
        rows.append(["views on device", "stock kornia", "kornia is not installed here", "skip"])
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = {k: [] for k in fns}
    for fn in fns.values():
        fn()
    for _ in range(sizes.view_rounds):
        for k, fn in fns.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[k].append(time.perf_counter() - t0)
    rate = {k: n / statistics.median(v) for k, v in times.items()}
    base = rate.get("torchvision v2 per sample")
    return [["views on device", f"{k}, simclr_cifar 2x32, batch {n}",
             f"{r:,.0f} img/s" + (f" ({r / base:.1f}x per sample)" if base else ""), "ok"]
            for k, r in rate.items()] + rows
