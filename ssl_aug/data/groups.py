"""Subgroup labels: a group id per image (e.g. the nuisance attribute of a spurious data set), group
names, (class, group) cells, and group labels for image folders from a CSV file.

    groups (N,) int64 in 0..G-1, names: G strings. A CSV maps image paths (relative to the class tree,
    e.g. "cat/0001.png") to group names: header `path,group`, one row per image.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import torch

from ssl_aug.errors import SslAugError

__all__ = ["check_groups", "cell_ids", "cell_names", "require_groups", "check_nonempty", "read_group_csv",
           "groups_for_files"]


def check_groups(groups, names: Sequence[str] | None, n: int) -> tuple[torch.Tensor, list[str]]:
    """Validate per-image group ids -> ((n,) int64 CPU tensor, list of G names); names default to "0".."G-1"."""
    g = torch.as_tensor(groups)
    if g.dtype.is_floating_point or g.dtype == torch.bool or g.ndim != 1 or g.shape[0] != n:
        raise SslAugError(f"groups must be ({n},) integer ids, one per image; got shape {tuple(g.shape)} {g.dtype}")
    g = g.long().cpu()
    top = int(g.max()) if n else -1
    if names is None:
        names = [str(i) for i in range(top + 1)]
    names = [str(s) for s in names]
    if n and (int(g.min()) < 0 or top >= len(names)):
        raise SslAugError(f"group ids span {int(g.min())}..{top}; allowed 0..{len(names) - 1} "
                          f"(one per group name: {', '.join(names)})")
    return g, names


def cell_ids(labels: torch.Tensor, groups: torch.Tensor, num_groups: int) -> torch.Tensor:
    """(N,) id of each image's (class, group) cell: label * num_groups + group."""
    return labels.long() * int(num_groups) + groups.long()


def cell_names(classes: Sequence[str], group_names: Sequence[str]) -> list[str]:
    """Names "class/group" in cell_ids order."""
    return [f"{c}/{g}" for c in classes for g in group_names]


def require_groups(groups, what: str) -> torch.Tensor:
    """Refuse (one line) a group objective or evaluation without group labels."""
    if groups is None:
        raise SslAugError(f"{what} needs group labels, but the data set has none: use the embedded data set "
                          "with spurious=RATE, or give an image folder a groups CSV (path,group)")
    return torch.as_tensor(groups).long()


def check_nonempty(groups: torch.Tensor, names: Sequence[str], split: str) -> None:
    """Refuse (one line) a split in which a named group has no images."""
    counts = torch.bincount(groups.long(), minlength=len(names))
    empty = [names[i] for i in range(len(names)) if counts[i] == 0]
    if empty:
        raise SslAugError(f"group {empty[0]!r} has no images in split {split!r} "
                          f"({len(empty)} empty of {len(names)}); every group needs at least one image")


def read_group_csv(path) -> dict[str, str]:
    """CSV with columns path,group -> {relative path (forward slashes): group name}."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise SslAugError(f"groups CSV {path} does not exist; give a file with header 'path,group'")
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or [c.strip().lower() for c in rows[0][:2]] != ["path", "group"]:
        raise SslAugError(f"groups CSV {path}: first line must be the header 'path,group', got {rows[0] if rows else 'nothing'}")
    out: dict[str, str] = {}
    for i, row in enumerate(rows[1:], start=2):
        if not row or not "".join(row).strip():
            continue
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            raise SslAugError(f"groups CSV {path} line {i}: {row!r} is not 'path,group'")
        out[row[0].strip().replace("\\", "/")] = row[1].strip()
    return out


def groups_for_files(files: Sequence[str], mapping: dict[str, str], source: str = "groups CSV"
                     ) -> tuple[torch.Tensor, list[str]]:
    """Group ids for the image paths `files` (relative, in data set order) from a {path: group} map ->
    ((N,) int64, sorted group names). Every file needs a row."""
    files = [f.replace("\\", "/") for f in files]
    missing = [f for f in files if f not in mapping]
    if missing:
        raise SslAugError(f"{source} has no group for {missing[0]!r} ({len(missing)} of {len(files)} images "
                          "missing); add a 'path,group' row for every image")
    names = sorted({mapping[f] for f in files})
    index = {g: i for i, g in enumerate(names)}
    return torch.tensor([index[mapping[f]] for f in files], dtype=torch.int64), names
