"""Shared pieces of the methods: multi-resolution encoding and argument checks."""

from __future__ import annotations

import torch
import torch.nn as nn

from ssl_aug.errors import SslAugError

__all__ = ["encode_views", "check_views", "require"]


def require(ok: bool, name: str, value, allowed: str) -> None:
    """Raise the one-line SslAugError ``name=value is not allowed: allowed`` unless ``ok``."""
    if not ok:
        raise SslAugError(f"{name}={value!r} is not allowed: {allowed}")


def check_views(views) -> int:
    """Validate a list of V >= 2 view batches (N, 3, H, W) with one N; return N."""
    if not isinstance(views, (list, tuple)) or len(views) < 2:
        raise SslAugError(f"a method needs a list of at least 2 view batches, got {type(views).__name__}")
    sizes = {v.shape[0] for v in views}
    if len(sizes) != 1 or any(v.dim() != 4 for v in views):
        shapes = [tuple(v.shape) for v in views]
        raise SslAugError(f"views have shapes {shapes}: all must be (N, C, H, W) with the same N")
    return views[0].shape[0]


def encode_views(backbone: nn.Module, views) -> torch.Tensor:
    """Backbone features of every view, one forward per resolution: V x (N, 3, H_v, W_v) -> (V * N, F).

    Views with equal (H, W) are concatenated into one batch (multi-crop: one forward for the global
    crops, one for the local crops); rows come back in view order (view 0's N rows first).
    """
    groups: dict[tuple, list[int]] = {}
    for i, v in enumerate(views):
        groups.setdefault(tuple(v.shape[-2:]), []).append(i)
    if len(groups) == 1:
        return backbone(torch.cat(list(views)))
    n = views[0].shape[0]
    out: list[torch.Tensor | None] = [None] * len(views)
    for idx in groups.values():
        feats = backbone(torch.cat([views[i] for i in idx]))
        for j, i in enumerate(idx):
            out[i] = feats[j * n : (j + 1) * n]
    return torch.cat(out)
