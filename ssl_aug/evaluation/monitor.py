"""Online kNN monitor for the trainer: a fixed held-out bank + query set, evaluated every N epochs."""

from __future__ import annotations

import json
import os

import torch
from torch import nn

from ssl_aug.errors import SslAugError
from ssl_aug.evaluation.features import check_images, extract_features
from ssl_aug.evaluation.knn import knn_evaluate
from ssl_aug.io import append_line


class KnnMonitor:
    """monitor(encoder) -> {"knn_top1": float, "knn_top5": float} on a fixed subset.

    bank_images (N,3,H,W) uint8 + bank_labels (N,) form the kNN memory, query_images/labels are scored.
    With log_path, each call appends one JSON line {"epoch", "step", "knn_top1", "knn_top5"}.
    Costs two feature passes (N + M images) and one exact kNN search; the encoder's train/eval mode is
    restored afterwards."""

    def __init__(self, bank_images, bank_labels, query_images, query_labels, mean, std, k: int = 200,
                 temperature: float = 0.1, batch_size: int = 512, log_path: str | os.PathLike | None = None,
                 self_index=None):
        """self_index (M,): the bank row that is query i itself (-1 = none), left out of its vote."""
        check_images(bank_images, "bank_images")
        check_images(query_images, "query_images")
        self.bank_images, self.query_images = bank_images, query_images
        self.bank_labels = torch.as_tensor(bank_labels).long().cpu()
        self.query_labels = torch.as_tensor(query_labels).long().cpu()
        if self.bank_labels.shape[0] != bank_images.shape[0] or self.query_labels.shape[0] != query_images.shape[0]:
            raise SslAugError(f"labels must have one entry per image: bank {self.bank_labels.shape[0]} labels for "
                              f"{bank_images.shape[0]} images, query {self.query_labels.shape[0]} for {query_images.shape[0]}")
        self.mean, self.std, self.k, self.temperature = mean, std, k, temperature
        self.batch_size, self.log_path, self.self_index = batch_size, log_path, self_index
        self.num_classes = int(max(int(self.bank_labels.max()), int(self.query_labels.max())) + 1)

    @classmethod
    def from_split(cls, images, labels, n_bank: int = 5000, n_query: int = 1000, seed: int = 0, **kw) -> "KnnMonitor":
        """Draw disjoint random bank / query subsets from one labelled set (e.g. the train split)."""
        n = images.shape[0]
        if n_bank < 1 or n_query < 1 or n_bank + n_query > n:
            raise SslAugError(f"n_bank + n_query must be <= {n} images (both >= 1), got {n_bank} + {n_query}")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        b, q = perm[:n_bank], perm[n_bank:n_bank + n_query]
        labels = torch.as_tensor(labels)
        return cls(images[b], labels[b], images[q], labels[q], **kw)

    def __call__(self, encoder: nn.Module, epoch: int | None = None, step: int | None = None) -> dict:
        kw = dict(batch_size=self.batch_size, progress=False)
        bank = extract_features(encoder, self.bank_images, self.mean, self.std, **kw)
        query = extract_features(encoder, self.query_images, self.mean, self.std, **kw)
        r = knn_evaluate(bank, self.bank_labels, query, self.query_labels, ks=(min(self.k, bank.shape[0]),),
                         temperature=self.temperature, num_classes=self.num_classes, self_index=self.self_index)
        out = {"knn_top1": r["top1"], "knn_top5": r["top5"]}
        if self.log_path is not None:
            append_line(self.log_path, json.dumps({"epoch": epoch, "step": step, **out}), what="kNN monitor log")
        return out
