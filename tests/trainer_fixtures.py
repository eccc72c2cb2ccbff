"""Tiny in-memory data and configs shared by the trainer tests (test_train, test_view_selection)."""

import torch

from ssl_aug.config import config_from_dict
from ssl_aug.data import ImageDataset
from ssl_aug.train import Trainer


def tiny_data(n=96, size=16, seed=0):
    """Random uint8 images (n, 3, size, size) with 4 cyclic labels."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    return ImageDataset(images=images, labels=torch.arange(n) % 4, classes=list("abcd"), name="tiny")


def tiny_config(tmp_path, method="simclr", widths=None, **train):
    """A CPU recipe small enough for unit tests: small_cnn, 16 px views (SwAV: + 2 local 8 px crops),
    batch 32, checkpoint every 2 steps; `train` overrides [train] keys (default 3 epochs)."""
    method_cfg = {"name": "simclr", "proj_hidden_dim": 32, "proj_dim": 16, "temperature": 0.5}
    augment = {"size": 16, "scale": [0.3, 1.0]}
    if method == "swav":
        method_cfg = {"name": "swav", "proj_hidden_dim": 32, "proj_dim": 16, "num_prototypes": 10,
                      "freeze_prototypes_iters": 2, "queue_length": 0}
        augment["multicrop"] = {"local_views": 2, "size": 8, "scale": [0.1, 0.3]}
    model = {"backbone": "small_cnn", "backbone_args": {"widths": widths} if widths else {}}
    return config_from_dict({
        "seed": 3, "device": "cpu", "output_dir": str(tmp_path / "run"),
        "model": model, "method": method_cfg, "augment": augment,
        "train": {"epochs": 3, "batch_size": 32, "optimizer": "sgd", "lr": 0.1, "log_every": 1,
                  "checkpoint_every": 2, "keep_checkpoints": 10, "warmup_epochs": 1, **train},
        "eval": {"final_knn": False},
    })


class StopAfter(Trainer):
    """A trainer that dies (like kill -9 would, but in-process) after `limit` optimiser steps."""

    limit = 0

    def optimize(self, views):
        if self.step >= self.limit:
            raise KeyboardInterrupt
        return super().optimize(views)
