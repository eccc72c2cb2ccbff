"""Sanity warnings: one test per registered check (fires on the bad setting, silent on a sane one),
train.strict makes the first one an error, and each names the key that changes it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ssl_aug.config import apply_overrides, config_from_dict
from ssl_aug.data import ImageDataset
from ssl_aug.data.image_sizes import sample_image_sizes
from ssl_aug.errors import SslAugError
from ssl_aug.train.sanity import SANITY_CHECKS, RunFacts, run_facts, sanity_check, sanity_warnings

BASE = {"device": "cpu", "augment": {"size": 32}, "train": {"epochs": 10, "warmup_epochs": 1, "batch_size": 16},
        "eval": {"knn_k": 5}}


def cfg(**overrides):
    return config_from_dict(apply_overrides(BASE, overrides))


def fired(facts: RunFacts) -> dict[str, str]:
    return {name: msg for name, check in SANITY_CHECKS.items() if (msg := check(facts))}


def test_every_concern_is_registered_once():
    assert set(SANITY_CHECKS) == {"warmup", "blur_kernel", "prototype_freezing", "knn_k", "upscaled_images",
                                  "small_images"}
    with pytest.raises(ValueError):
        sanity_check("warmup")(lambda facts: None)


def test_sane_settings_are_silent():
    assert fired(RunFacts(cfg(), steps=100, bank_per_class=60, packed=32)) == {}


def test_warmup_as_long_as_the_run():
    msg = fired(RunFacts(cfg(**{"train.epochs": 2, "train.warmup_epochs": 10})))["warmup"]
    assert "never reaches its peak" in msg and "train.warmup_epochs" in msg
    assert "warmup" not in fired(RunFacts(cfg(**{"train.epochs": 11, "train.warmup_epochs": 10})))


def test_blur_kernel_wider_than_the_crop():
    bad = cfg(**{"augment.blur": {"p": 0.5, "kernel_size": 23}})
    msg = fired(RunFacts(bad))["blur_kernel"]
    assert "= 23 is at least half the 32 px crop" in msg and "augment.blur.kernel_size = 3" in msg
    assert "blur_kernel" not in fired(RunFacts(cfg(**{"augment.blur": {"p": 0.5, "kernel_size": 3}})))
    assert "blur_kernel" not in fired(RunFacts(cfg(**{"augment.blur": {"p": 0.0, "kernel_size": 33}})))
    local = cfg(**{"augment.multicrop": {"local_views": 2, "size": 8}, "augment.blur": {"p": 0.5, "kernel_size": 5}})
    assert "half the 8 px crop" in fired(RunFacts(local))["blur_kernel"]  # the local crops are checked too


def test_swav_prototypes_frozen_for_the_whole_run():
    swav = cfg(**{"method": {"name": "swav", "freeze_prototypes_iters": 313, "queue_length": 0}})
    msg = fired(RunFacts(swav, steps=15))["prototype_freezing"]
    assert "313 >= the run's 15 optimiser steps" in msg and "method.freeze_prototypes_iters" in msg
    assert "prototype_freezing" not in fired(RunFacts(swav, steps=1000))
    default = cfg(**{"method": {"name": "swav", "queue_length": 0}})  # the method's default (313) counts too
    assert "prototype_freezing" in fired(RunFacts(default, steps=15))


def test_knn_k_as_large_as_a_class_of_the_bank():
    msg = fired(RunFacts(cfg(**{"eval.knn_k": 200}), bank_per_class=60))["knn_k"]
    assert "200 >= the kNN bank's 60 images per class" in msg and "eval.knn_k" in msg
    assert "knn_k" not in fired(RunFacts(cfg(**{"eval.knn_k": 20}), bank_per_class=60))


def _folder(root, sides):
    for i, (w, h) in enumerate(sides):
        (root / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(root / f"c{i % 2}" / f"{i}.png")
    return root


def test_images_upscaled_more_than_twice(tmp_path):
    sizes = sample_image_sizes(_folder(tmp_path, [(32, 32)] * 6 + [(40, 30)] * 3))
    assert sizes.median == 32 and sizes.sampled == 9 and sizes.auto_size() == 32
    msg = fired(RunFacts(cfg(), packed=256, sizes=sizes))["upscaled_images"]
    assert "packed at 256 px, upscaled 8.0x" in msg and "data.options.size = 32" in msg
    assert "upscaled_images" not in fired(RunFacts(cfg(), packed=64, sizes=sizes))  # 2x is fine


def test_very_small_images(tmp_path):
    sizes = sample_image_sizes(_folder(tmp_path, [(32, 32)] * 5 + [(1, 1)]))
    msg = fired(RunFacts(cfg(), packed=32, sizes=sizes))["small_images"]
    assert "1 of 6 images" in msg and "smallest 1x1" in msg and "data.options.min_size" in msg
    assert "small_images" not in fired(RunFacts(cfg(), packed=32, sizes=sample_image_sizes(tmp_path / "c0")))


def test_min_size_skips_the_small_images(tmp_path):
    from ssl_aug.data.imagefolder import load_imagefolder

    _folder(tmp_path / "src", [(32, 32)] * 5 + [(1, 1)])
    ds = load_imagefolder("train", tmp_path / "src", cache=tmp_path / "cache", verbose=False, min_size=8)
    assert len(ds) == 5 and ds.images.shape[-1] == 32  # packed at the images' own size
    assert len(load_imagefolder("train", tmp_path / "src", cache=tmp_path / "cache2", verbose=False)) == 6


def test_warnings_are_one_line_each_and_strict_stops(tmp_path):
    facts = RunFacts(cfg(**{"train.epochs": 2, "train.warmup_epochs": 10, "eval.knn_k": 200}), bank_per_class=60)
    lines = sanity_warnings(facts)
    assert len(lines) == 2 and all(line.startswith("warning: ") and "\n" not in line for line in lines)
    strict = RunFacts(cfg(**{"train.epochs": 2, "train.warmup_epochs": 10, "train.strict": True}))
    with pytest.raises(SslAugError, match="train.strict"):
        sanity_warnings(strict)


def test_run_facts_from_loaded_data():
    data = ImageDataset(images=torch.zeros(120, 3, 16, 16, dtype=torch.uint8), labels=torch.arange(120) % 4,
                        classes=list("abcd"), name="tiny")
    facts = run_facts(cfg(**{"train.max_steps": 7}), data, data)
    assert facts.steps == 7 and facts.bank_per_class == 30 and facts.packed == 16 and facts.sizes is None
    assert run_facts(cfg(), data, data).steps == 10 * (120 // 16)
