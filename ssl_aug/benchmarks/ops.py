"""`ssl-aug bench ops` / `python eval/bench_ops.py`: what a GPU would launch, counted on the CPU.

The images live on the `meta` device and a TorchDispatchMode counts every aten call: an op with a meta
tensor = a kernel a GPU would launch (view/alias ops and bare allocations launch none and are not
counted); a copy from CPU to meta = a host->device copy; a value read back from meta (`.item()`, a
copy to the CPU) = a device->host sync. Counted per MultiView call at batch 512 for simclr_cifar (2x32),
swav_multicrop (2x32 + 6x16) and simclr_imagenet (2x224 from 256), exact and fast, and for one full
training step (views + forward + backward + optimiser step) of SimCLR and SwAV on a small backbone.
Counts are deterministic (no timings). Prints a table and rewrites BENCHMARKS.md#ops.
"""

from __future__ import annotations

import argparse
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
FREE = {aten.empty.memory_format, aten.empty_strided.default, aten.empty_like.default, aten.detach.default,
        aten.lift_fresh.default, aten.alias.default}
COPIES = {aten._to_copy.default, aten.copy_.default, aten.lift_fresh_copy.default}
# (preset, preset kwargs, input side, targets: device ops, host->device copies per view)
VIEW_CASES = {"simclr_cifar": ({}, 32, 300), "swav_multicrop": ({}, 32, 1000),
              "simclr_imagenet": ({"size": 224}, 256, 600)}


def _devices(args, kwargs) -> set:
    out = set()
    for a in list(args) + list(kwargs.values()):
        for t in (a if isinstance(a, (list, tuple)) else [a]):
            if isinstance(t, torch.Tensor):
                out.add(t.device.type)
    return out


class OpCounter(TorchDispatchMode):
    """Counts device ops, host->device copies and device->host reads of work on the `meta` device."""

    def __init__(self):
        super().__init__()
        self.ops, self.h2d, self.d2h, self.views = Counter(), 0, 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        devs = _devices(args, kwargs)
        if func is aten._local_scalar_dense.default and "meta" in devs:
            self.d2h += 1
            return 0 if not args[0].is_floating_point() else 0.0
        target = kwargs.get("device")
        if func in COPIES:
            if func is aten.copy_.default:
                src, dst = args[1].device.type, args[0].device.type
            else:
                src = args[0].device.type
                dst = torch.device(target).type if target is not None else src
            if src == "cpu" and dst == "meta":
                self.h2d += 1
                return func(*args, **kwargs)
            if src == "meta" and dst == "cpu":  # a read back: the host waits for the device
                self.d2h += 1
                if func is aten.copy_.default:
                    return args[0]
                return torch.zeros(args[0].shape, dtype=kwargs.get("dtype") or args[0].dtype)
        if "meta" in devs or (target is not None and torch.device(target).type == "meta"):
            if not (func.is_view or func in FREE):
                self.ops[str(func.overloadpacket.__name__)] += 1
            else:
                self.views += 1
        return func(*args, **kwargs)

    @property
    def total(self) -> int:
        return sum(self.ops.values())


def count_views(preset: str, kw: dict, side: int, mode: str = "exact", batch: int = 512) -> OpCounter:
    """Counts of one MultiView call (after one warm-up call that fills the per-device constant cache)."""
    from ssl_aug.augment import MultiView, get_preset

    mv = MultiView(*get_preset(preset, **kw), mode=mode)
    x = torch.empty((batch, 3, side, side), dtype=torch.uint8, device="meta")
    mv(x, torch.Generator().manual_seed(0))
    with OpCounter() as c:
        mv(x, torch.Generator().manual_seed(1))
    return c


class _MetaAutocast(torch.autocast):
    """torch.autocast that accepts device_type "meta" (treated as "cpu": autocast off in these steps)."""

    def __init__(self, device_type, *args, **kwargs):
        super().__init__("cpu" if device_type == "meta" else device_type, *args, **kwargs)


def count_train_step(recipe: str, batch: int = 512, backbone: str = "small_cnn") -> tuple[OpCounter, int]:
    """Counts of one training step on meta: views + forward + backward + after_backward + optimiser step +
    after_optimizer_step (the recipe's method, optimiser and views; foreach updates as on CUDA). The second
    of two steps is counted (optimiser state exists). Returns (counter, number of views)."""
    from ssl_aug.augment.recipe import views_of
    from ssl_aug.config import load_recipe
    from ssl_aug.optim import build_optimizer
    from ssl_aug.train.setup import build_model

    cfg = load_recipe(recipe, [f'model.backbone="{backbone}"', f"train.batch_size={batch}"])
    method = build_model(cfg).to("meta")
    views = views_of(cfg).build()
    t = cfg.train
    opt = build_optimizer(method, t.optimizer, t.lr, t.momentum, t.weight_decay)
    for g in opt.param_groups:
        if "foreach" in g:
            g["foreach"] = True  # torch's default on CUDA
    x = torch.empty((batch, 3, 32, 32), dtype=torch.uint8, device="meta")

    def step(k: int) -> None:
        v = views(x, torch.Generator().manual_seed(k))
        loss, _ = method(v, step=k, epoch=1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        method.after_backward(k)
        opt.step()
        method.after_optimizer_step(k + 1, 1000)

    from unittest import mock
    with mock.patch.object(torch, "autocast", _MetaAutocast):
        step(0)
        with OpCounter() as c:
            step(1)
    return c, len(views.view_specs)


def main(argv: list[str] | None = None) -> int:
    from ssl_aug.benchmarks import markdown_table, update_benchmarks_md

    parser = argparse.ArgumentParser(prog="bench_ops", description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md alone")
    parser.add_argument("--no-train", action="store_true", help="views only (skip the training steps)")
    args = parser.parse_args(argv)
    rows, ok = [], True
    for name, (kw, side, target) in VIEW_CASES.items():
        for mode in ("exact", "fast"):
            c = count_views(name, kw, side, mode, args.batch)
            nviews = sum(get_counts(name, kw))
            met = c.total <= target and c.h2d <= nviews and c.d2h == 0
            ok &= met
            rows.append([f"views {name} ({mode})", f"{args.batch}x{side}px", c.total, f"<= {target}", c.views, c.h2d,
                         f"<= {nviews}", c.d2h, "0", "yes" if met else "NO"])
    if not args.no_train:
        for recipe in ("simclr_cifar10", "swav_cifar10"):
            c, nviews = count_train_step(recipe, args.batch)
            met = c.d2h == 0 and c.h2d <= nviews
            ok &= met
            rows.append([f"train step {recipe} (small_cnn)", f"{args.batch}x32px", c.total, "-", c.views, c.h2d,
                         f"<= {nviews}", c.d2h, "0", "yes" if met else "NO"])
    table = markdown_table(["call", "batch", "device ops", "target", "(view/alias ops, no kernel)",
                            "host->device copies", "target",
                            "device->host reads", "target", "met"], rows)
    print(table)
    if not args.no_write:
        body = (__doc__.split("\n\n", 1)[1].strip() + "\n\n" + table +
                "\n\nCounts, not timings: the same on any machine with this torch version.")
        update_benchmarks_md("ops", "GPU launch counts (ops on the meta device)", body)
    return 0 if ok else 1


def get_counts(name: str, kw: dict) -> list[int]:
    from ssl_aug.augment import get_preset
    return get_preset(name, **kw)[1]


if __name__ == "__main__":
    raise SystemExit(main())
