"""An encoder and its data for evaluation: resolve an encoder (run directory, checkpoint, export directory or
a randomly initialised baseline) and load the data it was trained on (its root, options, training split and
eval.test_split, unless the caller says otherwise). `ssl-aug eval` (ssl_aug.cli.eval_run) runs on these.

When the test split is the training split (a plain class-per-folder tree), a seeded, stratified 20%
of every class is held out as the query set and the rest is the bank: no image is scored against itself.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ssl_aug.data import balanced_subset, load_dataset
from ssl_aug.data.holdout import stratified_holdout
from ssl_aug.errors import SslAugError

HOLDOUT_FRACTION = 0.2


def _data_of(recipe: dict) -> dict:
    """The data keys evaluation needs from a recipe dict (config.json / checkpoint / export metadata)."""
    data = recipe.get("data") or {}
    return {"name": data.get("name"), "root": data.get("root"), "options": dict(data.get("options") or {}),
            "split": data.get("split", "train"), "test_split": (recipe.get("eval") or {}).get("test_split", "test"),
            "evaluators": dict((recipe.get("eval") or {}).get("evaluators") or {}),
            "eval": dict(recipe.get("eval") or {})}


def resolve_encoder(spec: str, device: torch.device):
    """-> (backbone taking normalised floats, mean, std, the run's data keys (see _data_of), label)."""
    if spec.startswith("random:"):
        from ssl_aug.models import build_backbone

        torch.manual_seed(0)
        return build_backbone(spec.split(":", 1)[1]).to(device).eval(), None, None, _data_of({}), spec
    path = Path(spec)
    if not path.exists():
        raise SslAugError(f"encoder {spec!r} not found: give a run directory, a checkpoint .pt, an export "
                          "directory (with encoder.json) or random:BACKBONE")
    if (path / "encoder.json").is_file() or path.name == "encoder.json":
        from ssl_aug.export import load_encoder

        encoder = load_encoder(path, device=device)
        recipe = encoder.metadata.get("recipe") or {}
        return encoder.backbone, list(encoder.mean), list(encoder.std), _data_of(recipe), str(path)
    from ssl_aug.augment.recipe import normalization
    from ssl_aug.config import config_from_dict
    from ssl_aug.export import encoder_from_checkpoint

    backbone, config = encoder_from_checkpoint(path, device=device)
    mean, std = normalization(config_from_dict(config))
    return backbone, mean, std, _data_of(config), str(path)


def _subset(images, labels, n: int, flag: str, groups=None, with_groups: bool = False):
    """A class-balanced subset of n images (0 = all); with_groups also returns the subset's group ids."""
    if n and n > len(labels):
        raise SslAugError(f"{flag} {n} is larger than the {len(labels)} images available; use at most "
                          f"{len(labels)}, or 0 for all")
    if n and n < len(labels):
        idx = balanced_subset(labels, n, 0)
        images, labels, groups = images[idx], labels[idx], None if groups is None else groups[idx]
    return (images, labels, groups) if with_groups else (images, labels)


def load_eval_data(data: dict, name: str | None = None, root: str | None = None, split: str | None = None,
                   test_split: str | None = None, with_groups: bool = False, roles: tuple[str, str] = ("bank", "query")):
    """((bank images, labels), (query images, labels), data name, description of the split used). data: the
    encoder's data keys (resolve_encoder); name / root / split / test_split replace them when given. with_groups
    also returns {test_groups (M,) or None, classes, group_names} for the subgroup report. roles: what the
    description calls the two sets (("train", "test") for fine-tuning)."""
    asked_split = split
    name = name or data["name"]
    if name is None:
        raise SslAugError("no data set known for this encoder: pass --data NAME (cifar10, cifar100, stl10, "
                          "imagefolder, npz, embedded)")
    same = name == data["name"]
    root = root or (data["root"] if same else None)
    options = data["options"] if same else {}
    split = split or (data["split"] if same else "train")
    test_split = test_split or (data["test_split"] if same else "test")
    train = load_dataset(name, split=split, root=root, **options)
    if not bool((train.labels >= 0).any()) and asked_split is None and split != "train":
        split = "train"  # trained on an unlabeled split (e.g. stl10 'unlabeled'): the labelled bank is 'train'
        train = load_dataset(name, split=split, root=root, **options)
    keep = train.labels >= 0  # unlabeled images cannot vote or be scored
    train_x, train_y = train.images[keep], train.labels[keep]
    if test_split == split:
        bank, held = stratified_holdout(train_y, HOLDOUT_FRACTION, seed=0)
        if len(held) == 0:
            raise SslAugError(f"split {split!r} has no class with 2 or more labelled images to hold out")
        how = (f"seeded stratified hold-out of split {split!r}: {len(bank)} {roles[0]} / {len(held)} {roles[1]} images "
               f"({HOLDOUT_FRACTION:.0%} of each class held out)")
        pair = (train_x[bank], train_y[bank]), (train_x[held], train_y[held])
        source, query_rows = train, keep.nonzero().squeeze(1)[held]
    else:
        test = load_dataset(name, split=test_split, root=root, **options)
        keep_t = test.labels >= 0
        pair = (train_x, train_y), (test.images[keep_t], test.labels[keep_t])
        source, query_rows = test, keep_t.nonzero().squeeze(1)
        how = (f"{roles[0]}: split {split!r} ({len(train_y)} images), {roles[1]}: split {test_split!r} "
               f"({int(keep_t.sum())} images)")
    if len(pair[0][1]) == 0 or len(pair[1][1]) == 0:
        raise SslAugError(f"data set {name!r} has no labelled images in {how}")
    if with_groups:
        groups = None if source.groups is None else source.groups[query_rows]
        return pair, name, how, {"test_groups": groups, "classes": source.classes, "group_names": source.group_names}
    return pair, name, how
