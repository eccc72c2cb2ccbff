"""Sanity warnings: settings that run but cannot do what they look like they do.

One registered check per concern (`@sanity_check(name)`); each returns None or ONE line naming what
happens and the key that changes it. `sanity_warnings(facts)` runs them all at the start of a run;
they never stop it unless the recipe sets `train.strict = true` (then the first one is an SslAugError).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ssl_aug.errors import SslAugError

__all__ = ["RunFacts", "SANITY_CHECKS", "sanity_check", "sanity_warnings", "run_facts", "SMALL_SIDE",
           "MAX_UPSCALE", "BLUR_SHARE"]

BLUR_SHARE = 0.5  # a blur kernel at least this share of the crop is warned about (SimCLR uses ~10%)
SMALL_SIDE = 8  # px: an image whose shorter side is under this is "very small"
MAX_UPSCALE = 2.0  # packing an image folder more than this many times its own size is worth a warning


@dataclass
class RunFacts:
    """What the checks look at. cfg: the Config; steps: optimiser steps the run will take (None: unknown);
    bank_per_class: labelled kNN bank images per class (None: no evaluation); packed: the side images are
    trained at; sizes: data.image_sizes.ImageSizes of the source folder (None: not an image folder)."""

    cfg: object
    steps: int | None = None
    bank_per_class: float | None = None
    monitor_per_class: float | None = None
    packed: int | None = None
    sizes: object = None


SANITY_CHECKS: dict[str, Callable[[RunFacts], str | None]] = {}


def sanity_check(name: str):
    """Register `check(facts) -> str | None` under `name` (one concern per check)."""
    def register(check):
        if name in SANITY_CHECKS:
            raise ValueError(f"sanity check {name!r} is registered twice")
        SANITY_CHECKS[name] = check
        return check
    return register


@sanity_check("warmup")
def _warmup(f: RunFacts) -> str | None:
    t = f.cfg.train
    if t.warmup_epochs >= t.epochs:
        return (f"train.warmup_epochs = {t.warmup_epochs:g} >= train.epochs = {t.epochs}: the learning rate is still "
                f"rising when the run ends and never reaches its peak (lower train.warmup_epochs)")
    return None


@sanity_check("blur_kernel")
def _blur(f: RunFacts) -> str | None:
    from ssl_aug.augment.recipe import view_specs

    for spec in view_specs(f.cfg.augment)[0]:
        blur = spec.blur
        if blur.p > 0 and blur.kernel_size >= BLUR_SHARE * spec.size:
            return (f"augment.blur.kernel_size = {blur.kernel_size} is at least half the {spec.size} px crop: the "
                    f"kernel spans the image and mostly samples padding (SimCLR uses about 10% of the crop: set "
                    f"augment.blur.kernel_size = {max(3, spec.size // 10 | 1)})")
    return None


@sanity_check("prototype_freezing")
def _prototypes(f: RunFacts) -> str | None:
    frozen = f.cfg.method.get("freeze_prototypes_iters")
    if f.cfg.method.get("name") != "swav" or f.steps is None:
        return None
    if frozen is None:
        from ssl_aug.methods import method_options

        frozen = method_options("swav").get("freeze_prototypes_iters", 0)
    if frozen >= f.steps:
        return (f"method.freeze_prototypes_iters = {frozen} >= the run's {f.steps} optimiser steps: the SwAV "
                f"prototypes stay frozen for the whole run and never learn (lower method.freeze_prototypes_iters)")
    return None


@sanity_check("knn_k")
def _knn_k(f: RunFacts) -> str | None:
    k = f.cfg.eval.knn_k
    for per_class, what in ((f.bank_per_class, "kNN bank"), (f.monitor_per_class, "kNN monitor's bank")):
        if per_class is not None and k >= per_class:
            return (f"eval.knn_k = {k} >= the {what}'s {per_class:.0f} images per class: every vote is mostly "
                    f"images of other classes (lower eval.knn_k, e.g. {max(1, int(per_class) // 3)})")
    return None


@sanity_check("upscaled_images")
def _upscaled(f: RunFacts) -> str | None:
    if f.sizes is None or f.packed is None or not f.sizes.sides:
        return None
    native = f.sizes.median
    if native and f.packed > MAX_UPSCALE * native:
        return (f"the images (median shorter side {native} px) are packed at {f.packed} px, upscaled "
                f"{f.packed / native:.1f}x: training sees interpolated pixels at {(f.packed / native) ** 2:.0f}x the "
                f"memory and compute (set data.options.size = {native}, or leave it unset to pack at the images' "
                f"own size)")
    return None


@sanity_check("small_images")
def _small(f: RunFacts) -> str | None:
    if f.sizes is None or not f.sizes.below(SMALL_SIDE):
        return None
    w, h, path = f.sizes.smallest
    return (f"{f.sizes.below(SMALL_SIDE)} of {f.sizes.sampled} images read are smaller than {SMALL_SIDE} px "
            f"(smallest {w}x{h}: {path}): they are upscaled and trained on as blocks of colour "
            f"(data.options.min_size = {SMALL_SIDE} skips them)")


def sanity_warnings(facts: RunFacts, checks: dict | None = None) -> list[str]:
    """One line per check that fires, 'warning: ...'; with train.strict = true the first is raised."""
    lines = [f"warning: {message}" for check in (checks or SANITY_CHECKS).values()
             if (message := check(facts))]
    if lines and getattr(facts.cfg.train, "strict", False):
        raise SslAugError(lines[0][len("warning: "):] + " (train.strict = true makes this an error)")
    return lines


def _per_class(labels, limit: int | None = None) -> float | None:
    if labels is None or len(labels) == 0:
        return None
    labels = labels[labels >= 0]
    classes = int(labels.unique().numel()) or 1
    return min(len(labels), limit or len(labels)) / classes


def run_facts(cfg, train, bank, world_size: int = 1) -> RunFacts:
    """The facts of a run about to start: `train` / `bank` ImageDatasets (or None when streamed / not evaluated)."""
    steps = None
    if train is not None:
        per_epoch = len(train.labels) // cfg.train.batch_size
        steps = cfg.train.epochs * per_epoch
        steps = min(steps, cfg.train.max_steps) if cfg.train.max_steps else steps
    sizes = None
    if cfg.data.name == "imagefolder" and cfg.data.root:
        from pathlib import Path

        from ssl_aug.data.image_sizes import sample_image_sizes
        from ssl_aug.data.imagefolder import resolve_tree

        sizes = sample_image_sizes(resolve_tree(Path(cfg.data.root).expanduser(), cfg.data.split))
    evaluate = cfg.eval.final_knn and bank is not None
    return RunFacts(cfg, steps=steps, bank_per_class=_per_class(bank.labels) if evaluate else None,
                    monitor_per_class=_per_class(bank.labels, cfg.eval.monitor_train)
                    if cfg.eval.knn_every and bank is not None else None,
                    packed=int(train.images.shape[-1]) if train is not None else None, sizes=sizes)
