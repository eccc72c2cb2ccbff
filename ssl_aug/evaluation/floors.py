"""Reference accuracies every result should be read against: chance, raw pixels (kNN on the per-image
mean-removed pixels) and a randomly initialised encoder of the recipe's architecture (kNN on its features),
with the recipe's kNN settings. Plots draw them as reference lines."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from ssl_aug.data.image_store import ImageStore, image_batches
from ssl_aug.evaluation.features import extract_features
from ssl_aug.evaluation.knn import knn_evaluate
from ssl_aug.models import backbone_args_for

__all__ = ["raw_pixel_features", "reference_accuracies", "floors_for_config", "reference_lines"]


def raw_pixel_features(images_uint8: torch.Tensor) -> torch.Tensor:
    """(N,3,H,W) uint8 (or an ImageStore) -> (N, 3HW) float32: pixels in [0, 1] minus each image's own mean
    (kNN normalises)."""
    if isinstance(images_uint8, ImageStore):
        return torch.cat([raw_pixel_features(x) for x in image_batches(images_uint8, 1024)])
    x = images_uint8.flatten(1).float().div_(255)
    return x - x.mean(1, keepdim=True)


def reference_accuracies(train, test, backbone: str, backbone_args: dict, mean, std, k: int = 200,
                         temperature: float = 0.1, seed: int = 0, num_classes: int | None = None) -> dict:
    """train/test: (uint8 images (N,3,H,W), labels (N,)) -> {"chance", "raw pixels", "random encoder"} top-1."""
    from ssl_aug.models import build_backbone

    (tr_x, tr_y), (te_x, te_y) = train, test
    c = int(num_classes or max(int(tr_y.max()), int(te_y.max())) + 1)
    k = min(k, len(tr_y))

    def top1(tr_f, te_f):
        return knn_evaluate(tr_f, tr_y, te_f, te_y, ks=(k,), temperature=temperature, num_classes=c)["by_k"][k]["top1"]

    torch.manual_seed(seed)
    encoder = build_backbone(backbone, **backbone_args).eval()
    feats = [extract_features(encoder, x, mean, std, progress=False) for x in (tr_x, te_x)]
    return {"chance": 1.0 / c, "raw pixels": top1(raw_pixel_features(tr_x), raw_pixel_features(te_x)),
            "random encoder": top1(*feats)}


def floors_for_config(cfg, cache_dir: str | Path | None = None) -> dict:
    """reference_accuracies for a recipe Config: bank = the labelled training split (data.subset applied),
    queries = eval.test_split; cached in cache_dir/floors.json keyed by the data, model and kNN settings."""
    from ssl_aug.augment.recipe import normalization
    from ssl_aug.train import load_training_data

    key_src = json.dumps({"data": cfg.to_dict()["data"], "model": cfg.to_dict()["model"], "k": cfg.eval.knn_k,
                          "t": cfg.eval.knn_temperature, "test": cfg.eval.test_split, "seed": cfg.seed}, sort_keys=True)
    key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
    cache = Path(cache_dir) / "floors.json" if cache_dir is not None else None
    if cache is not None and cache.is_file():
        stored = json.loads(cache.read_text())
        if stored.get("key") == key:
            return stored["floors"]
    train, test = load_training_data(cfg), load_training_data(cfg, split=cfg.eval.test_split)
    keep, keep_t = train.labels >= 0, test.labels >= 0
    floors = reference_accuracies((train.images[keep], train.labels[keep]), (test.images[keep_t], test.labels[keep_t]),
                                  cfg.model.backbone, backbone_args_for(cfg.model.backbone, cfg.model.backbone_args),
                                  *normalization(cfg),
                                  k=cfg.eval.knn_k, temperature=cfg.eval.knn_temperature, seed=cfg.seed,
                                  num_classes=len(train.classes) or None)
    if cache is not None:
        from ssl_aug.io import atomic_write_json

        atomic_write_json(cache, {"key": key, "floors": floors})
    return floors


def reference_lines(runs, out_dir: str | Path) -> dict:
    """Reference lines for an ablation's accuracy plot: floors_for_config of its first run's recipe (cached in
    out_dir); {} when no run has a config or the data cannot be loaded (the plot then has no lines)."""
    from ssl_aug.errors import SslAugError

    cfg = next((r.config for r in runs if getattr(r, "config", None) is not None), None)
    if cfg is None:
        return {}
    try:
        return floors_for_config(cfg, cache_dir=out_dir)
    except (SslAugError, OSError, RuntimeError, ValueError):
        return {}
