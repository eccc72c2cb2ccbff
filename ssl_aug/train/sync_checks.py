"""The sync audit (:mod:`ssl_aug.train.sync_audit`) applied to the four places a training step can stall:
a view call, a data-source batch, a loss call and a whole training step. Each returns the
:class:`SyncAudit` of the audited (second) call: the first call fills per-device caches (constants,
index tensors, optimiser state), as the first step of a real run does.

Targets (the tests and ``eval/device_check.sh`` hold every registered method, preset, op and source to
them): no device->host read, no data-dependent shape, no blocking host->device copy; one non-blocking
copy per view call (all its parameters), none per resident batch.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch

from ssl_aug.train.sync_audit import AUDIT_DEVICE, SyncAudit, meta_autocast

def _on_meta(fn):
    """Run `fn` with torch.autocast accepting the audit device (as on CUDA, code opens autocast by device type)."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        with meta_autocast():
            return fn(*args, **kwargs)
    return run


__all__ = ["audit_views", "audit_source", "audit_call", "audit_method_step", "audit_trainer_step"]


@_on_meta
def audit_views(views, batch: int = 16, side: int = 32) -> SyncAudit:
    """One MultiView call on a (batch, 3, side, side) uint8 batch on the audit device."""
    x = torch.zeros((batch, 3, side, side), dtype=torch.uint8).to(AUDIT_DEVICE)
    with SyncAudit():  # warm-up (reads return zeros on the audit device)
        views(x, torch.Generator().manual_seed(0))
    with SyncAudit() as audit:
        views(x, torch.Generator().manual_seed(1))
    return audit


@_on_meta
def audit_source(make_source: Callable[[torch.device], object], batches: int = 2) -> SyncAudit:
    """`batches` batches of a data source built on the audit device (after its first batch)."""
    source = make_source(AUDIT_DEVICE)
    it = iter(source)
    with SyncAudit():
        next(it)
    with SyncAudit() as audit:
        for _ in range(batches):
            next(it)
    return audit


@_on_meta
def audit_call(fn: Callable, *args, **kwargs) -> SyncAudit:
    """fn(*args) on the audit device (the inputs already there), after one warm-up call."""
    with SyncAudit():
        fn(*args, **kwargs)
    with SyncAudit() as audit:
        fn(*args, **kwargs)
    return audit


def _step(method, views, optimizer, step: int, total: int):
    loss, stats = method(views, step=step, epoch=1)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    method.after_backward(step)
    optimizer.step()
    method.after_optimizer_step(step + 1, total)
    return loss, stats


@_on_meta
def audit_method_step(name: str, batch: int = 16, backbone: str = "small_cnn", views=None,
                      **options) -> SyncAudit:
    """One training step (views, forward, backward, after_backward, SGD foreach step, after_optimizer_step)
    of registered method `name` with its default options (plus `options`), on two simclr_cifar views."""
    from ssl_aug.augment import MultiView, get_preset
    from ssl_aug.methods import build_method
    from ssl_aug.models import build_backbone

    torch.manual_seed(0)
    method = build_method(name, build_backbone(backbone), **options).to(AUDIT_DEVICE).train()
    views = views or MultiView(*get_preset("simclr_cifar"))
    optimizer = torch.optim.SGD(method.parameters(), lr=0.01, momentum=0.9, foreach=True)
    x = torch.zeros((batch, 3, 32, 32), dtype=torch.uint8).to(AUDIT_DEVICE)
    with SyncAudit():
        _step(method, views(x, torch.Generator().manual_seed(0)), optimizer, 0, 100)
    with SyncAudit() as audit:
        _step(method, views(x, torch.Generator().manual_seed(1)), optimizer, 1, 100)
    return audit


@_on_meta
def audit_trainer_step(cfg, data, steps: int = 2) -> SyncAudit:
    """`steps` steps of the real Trainer loop body (source batch, make_views, optimize, the on-device
    loss bookkeeping) for recipe `cfg` on `data` (an ImageDataset; ignored with data.stream), after one
    warm-up step. The trainer is built on the CPU, then its model, optimiser and source move to the
    audit device (amp must be "none": autocast has no meta device)."""
    from ssl_aug.data import BatchSource, ShardStream
    from ssl_aug.train.setup import build_optimization
    from ssl_aug.train.trainer import Trainer

    trainer = Trainer(cfg, progress=False, train_data=data)
    trainer.device = AUDIT_DEVICE
    trainer.method = trainer.model = trainer.method.to(AUDIT_DEVICE)
    trainer.optimizer, trainer.scheduler, trainer.scaler, _ = build_optimization(
        cfg, trainer.method, trainer.steps_per_epoch, AUDIT_DEVICE)
    for group in trainer.optimizer.param_groups:
        if "foreach" in group:
            group["foreach"] = True  # torch's default on CUDA
    src = trainer.source
    common = dict(batch_size=src.batch_size, seed=src.seed, rank=src.rank, world_size=src.world_size,
                  drop_last=src.drop_last, device=AUDIT_DEVICE)
    if isinstance(src, ShardStream):  # in the main thread, so the audit sees every upload
        trainer.source = ShardStream(src.paths, prefetch=False, **common)
    else:
        trainer.source = BatchSource(src.images, **common)
    trainer.epoch_loss = trainer._new_epoch_loss()
    nonfinite = torch.zeros((), dtype=torch.bool, device=AUDIT_DEVICE)
    batches = iter(trainer.source)

    def one_step(nonfinite):
        _, images = next(batches)
        loss, _ = trainer.optimize(trainer.make_views(images))
        trainer.step += 1
        return trainer.accumulate_loss(loss, nonfinite)

    with SyncAudit():
        nonfinite = one_step(nonfinite)
    with SyncAudit() as audit:
        for _ in range(steps):
            nonfinite = one_step(nonfinite)
    return audit
