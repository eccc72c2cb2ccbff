"""Subgroup evaluation: accuracy per (class, group) cell, the worst cell, and the per-class subgroup gap.

    predictions (M,), labels (M,), groups (M,) int64 -> {"average", "worst_group_acc", "worst_group",
    "mean_gap", "max_gap", "per_class_gap": {class: max - min cell accuracy within the class},
    "cells": {"class/group": {"acc", "n"}}}
Cells without test images are left out (a class with one populated cell has gap 0). The gap ratio of
two models is mean_gap(reference) / mean_gap(model) (how many times the gap shrank).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from ssl_aug.data.groups import cell_ids, require_groups
from ssl_aug.errors import SslAugError

__all__ = ["group_metrics", "predictions", "group_table", "gap_ratio"]


def predictions(scores: torch.Tensor) -> torch.Tensor:
    """(M, C) scores -> (M,) argmax, ties to the lower class index (as the kNN/linear reports rank)."""
    return torch.sort(scores.float().cpu(), dim=1, descending=True, stable=True).indices[:, 0]


def group_metrics(pred, labels, groups, classes: Sequence[str] | None = None,
                  group_names: Sequence[str] | None = None) -> dict:
    """Accuracy per (class, group), worst cell and per-class gaps (module docstring)."""
    groups = require_groups(groups, "subgroup evaluation").cpu()
    pred, labels = torch.as_tensor(pred).long().cpu(), torch.as_tensor(labels).long().cpu()
    if not (pred.shape == labels.shape == groups.shape) or pred.ndim != 1:
        raise SslAugError(f"subgroup evaluation needs predictions, labels and groups of one shape (M,); got "
                          f"{tuple(pred.shape)}, {tuple(labels.shape)}, {tuple(groups.shape)}")
    if pred.numel() == 0:
        raise SslAugError("subgroup evaluation got no test images; need at least one")
    c = len(classes) if classes is not None else int(labels.max()) + 1
    g = len(group_names) if group_names is not None else int(groups.max()) + 1
    classes = list(classes) if classes is not None else [str(i) for i in range(c)]
    group_names = list(group_names) if group_names is not None else [str(i) for i in range(g)]
    if int(labels.min()) < 0 or int(labels.max()) >= c or int(groups.min()) < 0 or int(groups.max()) >= g:
        raise SslAugError(f"labels must be in 0..{c - 1} and groups in 0..{g - 1} for subgroup evaluation")
    cell = cell_ids(labels, groups, g)
    n = torch.bincount(cell, minlength=c * g).view(c, g)
    right = torch.bincount(cell[pred == labels], minlength=c * g).view(c, g)
    acc = right.double() / n.clamp_min(1)
    cells, gaps = {}, {}
    worst = (math.inf, None)
    for i in range(c):
        accs = [float(acc[i, j]) for j in range(g) if n[i, j] > 0]
        for j in range(g):
            if n[i, j] > 0:
                cells[f"{classes[i]}/{group_names[j]}"] = {"acc": float(acc[i, j]), "n": int(n[i, j])}
                if float(acc[i, j]) < worst[0]:
                    worst = (float(acc[i, j]), f"{classes[i]}/{group_names[j]}")
        if accs:
            gaps[classes[i]] = max(accs) - min(accs)
    return {"average": float((pred == labels).double().mean()), "worst_group_acc": worst[0], "worst_group": worst[1],
            "mean_gap": sum(gaps.values()) / len(gaps), "max_gap": max(gaps.values()), "per_class_gap": gaps,
            "cells": cells}


def gap_ratio(reference_gap: float, gap: float) -> float:
    """How many times smaller `gap` is than `reference_gap` (inf when gap is 0 and the reference is not)."""
    if gap <= 0:
        return math.inf if reference_gap > 0 else 1.0
    return reference_gap / gap


def group_table(results: dict) -> str:
    """Markdown table of the "groups" entries of an evaluate_encoder report ("" when there are none)."""
    rows = [(name, r["groups"]) for name, r in ((k, results.get(k) or {}) for k in ("knn", "linear", "finetune"))
            if isinstance(r, dict) and "groups" in r]
    if not rows:
        return ""
    lines = ["| evaluation | average % | worst group % | worst group | mean class gap % | max class gap % |",
             "|---|---|---|---|---|---|"]
    for name, m in rows:
        lines.append(f"| {name} | {100 * m['average']:.2f} | {100 * m['worst_group_acc']:.2f} | {m['worst_group']} | "
                     f"{100 * m['mean_gap']:.2f} | {100 * m['max_gap']:.2f} |")
    return "\n".join(lines)
