"""Memory and time of a run, estimated before it starts, from the recipe, the data and the machine.

Method (no training step is run, so the estimate costs well under a second even for a ResNet-50):
- the model is built on PyTorch's "meta" device (shapes only, no memory) and one image per view
  family is pushed through the backbone with forward hooks on every leaf module: parameters P,
  activation elements per image A(size) (the sum of leaf outputs, what autograd keeps for backward)
  and forward multiply-adds per image F(size) (convolutions and linear layers);
- memory = weights + gradients + optimiser state (4P bytes each; Adam keeps two states)
  + ACTIVATION_FACTOR * A * batch * views * bytes per element (2 under bf16/fp16 autocast, else 4)
  + the views themselves + the training set (uint8, on the device) + what this process already holds
  (host) or the CUDA context (device);
- time per epoch = steps * (3 * 2F * views * batch / the device's measured rate + view time): a
  convolution's forward and backward are timed on the training device with the current thread count
  (a loaded machine gives a lower rate, hence a longer estimate), and the recipe's views are timed on
  32 random images of the stored size and scaled to the batch.
The estimate is good to about a factor of two (the order of magnitude is what decides whether a run
fits); eval/check_estimate.py compares it with measured runs (BENCHMARKS.md#estimate).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

__all__ = ["Footprint", "estimate_footprint", "available_host_bytes", "measured_rate", "ACTIVATION_FACTOR",
           "HOST_SHARE", "CUDA_CONTEXT"]

ACTIVATION_FACTOR = 1.0  # bytes kept for backward per leaf-output element, relative to the element size
HOST_SHARE = 0.9  # a run may plan on at most this share of the available memory
CUDA_CONTEXT = 600 * 2**20  # bytes the CUDA context and cuDNN workspaces take on the device
GIB = 2**30
CGROUP = Path("/sys/fs/cgroup")  # the Linux cgroup v2 interface: a container's memory limit and use


@dataclass
class Footprint:
    """Estimated bytes on the host and on the training device (equal to host on CPU), seconds per epoch,
    and what they were computed from."""

    host: int
    device: int
    epoch_s: float
    steps_per_epoch: int
    params: int
    activations_per_image: int
    flops_per_step: float
    rate: float  # FLOP/s measured on the training device
    device_type: str

    def line(self, host_free: int, device_free: int | None) -> str:
        """The estimate as the one line a run prints first."""
        where = (f"{self.host / GIB:.1f} GiB host memory of {host_free / GIB:.1f} GiB available" if
                 self.device_type == "cpu" else
                 f"{self.device / GIB:.1f} GiB on the {self.device_type} device of {(device_free or 0) / GIB:.1f} "
                 f"GiB free, {self.host / GIB:.1f} GiB host memory of {host_free / GIB:.1f}")
        step = self.epoch_s / max(self.steps_per_epoch, 1)
        return (f"estimate: {where}; about {duration(self.epoch_s)} per epoch ({self.steps_per_epoch} steps of "
                f"{step:.2g} s, "
                f"{self.params / 1e6:.1f} M parameters, {self.flops_per_step / 1e9:.0f} GFLOP per step at a measured "
                f"{self.rate / 1e9:.0f} GFLOP/s)")


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _read_int(path: Path) -> int | None:
    try:
        text = Path(path).read_text().split()[0]
    except (OSError, IndexError):
        return None
    return int(text) if text.isdigit() else None


def available_host_bytes() -> int:
    """Memory this process may still take: MemAvailable, less where a cgroup limit (container, Slurm job)
    is tighter, less where $SSL_AUG_MEMORY_LIMIT (GiB, the most a run may plan on) says so."""
    free = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024
    except OSError:
        pass
    if free is None:
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            free = 1 << 62
    limit, used = _read_int(CGROUP / "memory.max"), _read_int(CGROUP / "memory.current")
    if limit is not None and used is not None:
        free = min(free, max(limit - used, 0))
    cap = os.environ.get("SSL_AUG_MEMORY_LIMIT")
    if cap:
        try:
            free = min(free, int(float(cap) * GIB))
        except ValueError:
            pass
    return free


def _process_bytes() -> int:
    """Resident memory of this process now (data sets already loaded included)."""
    try:  # /proc/self/statm: total pages, resident pages, ...
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


_RATES: dict[str, float] = {}  # measured once per process and device / thread count
_VIEW_SECONDS: dict[str, float] = {}
_MODELS: dict[str, tuple[int, list[tuple[int, float]]]] = {}


def measured_rate(device: torch.device, repeats: int = 5) -> float:
    """FLOP/s of a 3x3 convolution's forward + backward on `device` (median of `repeats`, cached per device)."""
    key = f"{device}:{torch.get_num_threads()}"
    if key in _RATES:
        return _RATES[key]
    conv = nn.Conv2d(64, 64, 3, padding=1).to(device)
    x = torch.randn(8, 64, 32, 32, device=device, requires_grad=True)  # 1.8 GFLOP a call: ~0.4 s in all on 1 core
    flops = 3 * 2 * (8 * 64 * 32 * 32) * (64 * 9)  # forward + backward (grad input, grad weight)
    times = []
    for i in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        conv(x).sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:  # the first call warms up
            times.append(time.perf_counter() - start)
    _RATES[key] = flops / max(sorted(times)[len(times) // 2], 1e-9)
    return _RATES[key]


def view_seconds(augment: dict, image_side: int, batch: int, device: torch.device, probe: int = 32) -> float:
    """Seconds the recipe's views take for `batch` images of `image_side` px: timed on `probe` random
    images on `device` (second call; the first warms up), scaled linearly to the batch."""
    from ssl_aug.augment.recipe import build_views

    n = min(batch, probe)
    key = json.dumps([augment, image_side, n, str(device), torch.get_num_threads()], sort_keys=True, default=str)
    if key in _VIEW_SECONDS:
        return _VIEW_SECONDS[key] * batch / n
    views = build_views(augment)
    images = torch.randint(0, 256, (n, 3, image_side, image_side), dtype=torch.uint8, device=device)
    generator = torch.Generator().manual_seed(0)
    for i in range(2):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        views(images, generator=generator)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    _VIEW_SECONDS[key] = time.perf_counter() - start
    return _VIEW_SECONDS[key] * batch / n


def _counts(backbone: nn.Module, size: int) -> tuple[int, float]:
    """(activation elements, forward FLOPs) for one image of `size` px through `backbone` (meta tensors)."""
    acts, flops = [0], [0.0]

    def hook(module, inputs, output):
        if not isinstance(output, torch.Tensor):
            return
        per_image = output[0].numel()
        acts[0] += per_image
        if isinstance(module, nn.modules.conv._ConvNd):
            k = module.in_channels // module.groups
            for side in module.kernel_size:
                k *= side
            flops[0] += 2.0 * per_image * k
        elif isinstance(module, nn.Linear):
            flops[0] += 2.0 * per_image * module.in_features

    handles = [m.register_forward_hook(hook) for m in backbone.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            backbone(torch.empty(1, 3, size, size, device="meta"))
    finally:
        for handle in handles:
            handle.remove()
    return acts[0], flops[0]


def estimate_footprint(cfg, num_images: int, image_side: int, device: torch.device, world_size: int = 1) -> Footprint:
    """The Footprint of training `cfg` on `num_images` images stored at `image_side` px on `device`."""
    from ssl_aug.augment.recipe import view_specs
    from ssl_aug.train.setup import build_model

    specs, counts = view_specs(cfg.augment)
    key = json.dumps([cfg.model.backbone, cfg.model.backbone_args, cfg.method, [s.size for s in specs]],
                     sort_keys=True, default=str)
    if key not in _MODELS:
        state = torch.random.get_rng_state()
        try:
            with torch.device("meta"):
                method = build_model(cfg)
        finally:
            torch.random.set_rng_state(state)  # building the model seeds the generator; the run's stream is untouched
        _MODELS[key] = (sum(p.numel() for p in method.parameters()), [_counts(method.backbone, s.size) for s in specs])
    params, per_family = _MODELS[key]
    batch = cfg.train.batch_size // world_size
    acts = flops = view_elems = 0
    for spec, count, (a, f) in zip(specs, counts, per_family):
        acts, flops, view_elems = acts + a * count, flops + f * count, view_elems + 3 * spec.size ** 2 * count
    head_flops = 2.0 * params  # projector / prototypes: about one multiply-add per parameter per view
    flops_per_step = 3.0 * batch * (flops + head_flops * sum(counts)) * cfg.train.view_candidates
    element = 2 if cfg.train.amp in ("bf16", "fp16") else 4
    states = 2 if cfg.train.optimizer in ("adam", "adamw") else 1
    training = (4 * params * (2 + states) + int(ACTIVATION_FACTOR * acts * batch * element)
                + 4 * view_elems * batch * cfg.train.view_candidates)
    data = 0 if cfg.data.stream else num_images * 3 * image_side ** 2
    steps = max(num_images // cfg.train.batch_size, 1)
    rate = measured_rate(device)
    epoch_s = steps * (flops_per_step / rate + view_seconds(cfg.augment, image_side, batch, device)
                       * cfg.train.view_candidates)
    now = _process_bytes()
    if device.type == "cpu":
        host = dev = now + training  # the training set is already in this process's memory
    else:
        host, dev = now, training + data + CUDA_CONTEXT
    return Footprint(host, dev, epoch_s, steps, params, acts, flops_per_step, rate, device.type)
