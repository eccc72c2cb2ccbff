"""Search objectives, computed on a validation split carved from the training set (never the test set).

- `knn_val` (supervised, AutoAugment-style): weighted kNN top-1 of the validation images against a
  bank of the remaining training images (cosine, k, temperature of the recipe's [eval]).
- label-free scores (no labels read): `alignment` E||f(x) - f(x+)||^2 over two views of a fixed
  reference augmentation (lower = better) and `uniformity` log E exp(-2||f(x) - f(y)||^2) (lower =
  better), Wang & Isola 2020, on L2-normalised backbone features; `align_uniform` = -(alignment +
  uniformity); `rotation` (SelfAugment, Reed et al. 2021): accuracy of a linear head on frozen features
  predicting which of 0/90/180/270 degrees an image was rotated by (fit on half the validation images,
  scored on the other half). Every score in `SCORES` is oriented so that higher is better.
"""

from __future__ import annotations

import torch

from ssl_aug.errors import SslAugError

__all__ = ["OBJECTIVES", "SCORES", "LABEL_FREE", "alignment", "uniformity", "rotation_accuracy", "carve_validation",
           "ObjectiveData", "compute_scores", "check_objective"]

OBJECTIVES = {"knn_val": True, "align_uniform": False, "rotation": False}  # name -> needs labels
LABEL_FREE = ("neg_alignment", "neg_uniformity", "align_uniform", "rotation")
SCORES = ("knn_val",) + LABEL_FREE


def alignment(z1: torch.Tensor, z2: torch.Tensor, alpha: float = 2.0) -> float:
    """z1, z2 (N, D) L2-normalised features of two views of the same N images -> mean ||z1_i - z2_i||^alpha."""
    return float((z1 - z2).norm(dim=1).pow(alpha).mean())


def uniformity(z: torch.Tensor, t: float = 2.0) -> float:
    """z (N, D) L2-normalised, N >= 2 -> log of the mean over pairs i < j of exp(-t ||z_i - z_j||^2)."""
    if z.shape[0] < 2:
        raise SslAugError(f"uniformity needs at least 2 images, got {z.shape[0]}")
    return float(torch.pdist(z.double(), p=2).pow(2).mul(-t).exp().mean().log())


def _rotations(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N,3,H,W) square -> (4N,3,H,W) rotated by 0/90/180/270 degrees, labels (4N,) in 0..3."""
    rotated = torch.cat([torch.rot90(images, k, dims=(2, 3)) for k in range(4)])
    return rotated, torch.arange(4).repeat_interleave(images.shape[0])


def rotation_accuracy(encoder, images: torch.Tensor, mean, std, seed: int = 0, epochs: int = 100) -> float:
    """SelfAugment's label-free score: linear rotation classifier on frozen features of half the images
    (all four rotations of an image on the same side), accuracy on the other half."""
    from ssl_aug.evaluation.features import extract_features
    from ssl_aug.evaluation.linear import linear_probe

    n = images.shape[0]
    if n < 8 or images.shape[2] != images.shape[3]:
        raise SslAugError(f"rotation score needs >= 8 square images, got {tuple(images.shape)}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    halves = perm[: n // 2], perm[n // 2:]
    feats = []
    for half in halves:
        rotated, labels = _rotations(images[half])
        feats.append((extract_features(encoder, rotated, mean, std, progress=False), labels))
    (tf, ty), (qf, qy) = feats
    return float(linear_probe(tf, ty, qf, qy, num_classes=4, epochs=epochs, weight_decays=(1e-4,), seed=seed)["top1"])


def check_objective(name: str, labels: torch.Tensor | None) -> bool:
    """Validate an objective name against the data; -> whether labels are available."""
    if name not in OBJECTIVES:
        raise SslAugError(f"search objective {name!r} is not allowed; choose one of: {', '.join(OBJECTIVES)}")
    labelled = labels is not None and labels.numel() > 0 and bool((labels >= 0).all())
    if OBJECTIVES[name] and not labelled:
        raise SslAugError(f"search objective {name!r} needs labels but the training set is unlabelled; choose a "
                          f"label-free objective: {', '.join(n for n, need in OBJECTIVES.items() if not need)}")
    return labelled


def carve_validation(labels: torch.Tensor, size: int, seed: int, labelled: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, validation indices), disjoint and sorted; class-balanced when labelled."""
    n = labels.shape[0]
    if not isinstance(size, int) or isinstance(size, bool) or not 8 <= size <= n // 2:
        raise SslAugError(f"search validation = {size!r} images is not allowed; use an integer in [8, {n // 2}] "
                          f"(the training set has {n} images)")
    if labelled:
        from ssl_aug.data.subset import balanced_subset

        val = balanced_subset(labels, size, seed)
    else:
        val = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:size].sort().values
    keep = torch.ones(n, dtype=torch.bool)
    keep[val] = False
    return keep.nonzero().squeeze(1), val


class ObjectiveData:
    """What every trial is scored on: the validation images (and labels when labelled), a kNN bank from
    the remaining training images, and a fixed reference augmentation for alignment (two views, seeded)."""

    def __init__(self, bank_images, bank_labels, val_images, val_labels, reference_views, labelled: bool,
                 k: int = 200, temperature: float = 0.1, seed: int = 0):
        self.bank_images, self.bank_labels = bank_images, bank_labels
        self.val_images, self.val_labels = val_images, val_labels
        self.labelled, self.k, self.temperature, self.seed = labelled, k, temperature, seed
        gen = torch.Generator().manual_seed(seed)
        views = reference_views(val_images, generator=gen)  # normalised float views, fixed for every trial
        self.view_pair = (views[0], views[1])


def compute_scores(encoder, data: ObjectiveData, mean, std, rotation: bool = True) -> dict:
    """Every score of `SCORES` that the data allow (knn_val only when labelled), higher = better, plus the
    raw alignment and uniformity."""
    from ssl_aug.evaluation.features import encode, extract_features
    from ssl_aug.evaluation.knn import knn_evaluate

    was_training = encoder.training
    encoder.eval()
    try:
        out = {}
        val = extract_features(encoder, data.val_images, mean, std, progress=False)
        if data.labelled:
            bank = extract_features(encoder, data.bank_images, mean, std, progress=False)
            num_classes = int(max(int(data.bank_labels.max()), int(data.val_labels.max())) + 1)
            r = knn_evaluate(bank, data.bank_labels, val, data.val_labels, ks=(min(data.k, bank.shape[0]),),
                             temperature=data.temperature, num_classes=num_classes)
            out["knn_val"] = float(r["top1"])
        z1, z2 = (encode(encoder, v) for v in data.view_pair)
        out["alignment"] = alignment(z1, z2)
        out["uniformity"] = uniformity(val)
        out["neg_alignment"], out["neg_uniformity"] = -out["alignment"], -out["uniformity"]
        out["align_uniform"] = -(out["alignment"] + out["uniformity"])
        if rotation:
            out["rotation"] = rotation_accuracy(encoder, data.val_images, mean, std, seed=data.seed)
        return out
    finally:
        encoder.train(was_training)
