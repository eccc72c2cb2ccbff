"""Test-time augmentation: the standard 10-crop (4 corner crops + centre crop, each with and without a
horizontal flip, every crop resized back to the input size) or just {original, flip}; class
probabilities averaged over views."""

from __future__ import annotations

from dataclasses import dataclass

from typing import Callable

import torch
import torchvision.transforms.v2.functional as TF
from torch import nn

from ssl_aug.data.image_store import image_batches
from ssl_aug.errors import SslAugError
from ssl_aug.evaluation.base import Evaluator, EvaluatorConfig, pct, register_evaluator
from ssl_aug.evaluation.calibration import expected_calibration_error
from ssl_aug.evaluation.features import check_images, encode, normalize_images
from ssl_aug.evaluation.knn import classification_metrics, knn_classify

VIEWS = ("ten_crop", "flip")


def tta_views(images: torch.Tensor, views: str = "ten_crop", crop_fraction: float = 0.875) -> list[torch.Tensor]:
    """(N,3,H,W) -> list of (N,3,H,W) views. "flip": [original, hflip]. "ten_crop": torchvision's ten_crop
    (tl, tr, bl, br, centre crops of side round(crop_fraction*H/W), then the same five of the flipped
    image), each resized back to (H, W) (bilinear, antialias)."""
    if views == "flip":
        return [images, TF.hflip(images)]
    if views != "ten_crop":
        raise SslAugError(f"views must be one of {VIEWS}, got {views!r}")
    if not 0 < crop_fraction <= 1:
        raise SslAugError(f"crop_fraction must be in (0, 1], got {crop_fraction}")
    h, w = images.shape[-2:]
    ch, cw = max(1, round(crop_fraction * h)), max(1, round(crop_fraction * w))
    return [TF.resize(c, [h, w], antialias=True) for c in TF.ten_crop(images, [ch, cw])]


def tta_predict(encoder: nn.Module, head: Callable[[torch.Tensor], torch.Tensor], images_uint8: torch.Tensor,
                mean, std, views: str = "ten_crop", outputs: str = "logits", normalize: bool = True,
                batch_size: int = 512, crop_fraction: float = 0.875) -> tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities (N, C) without TTA (original view) and with TTA (mean over views).
    head maps encoder features (N, D) to logits (outputs="logits", softmaxed) or to non-negative scores
    (outputs="scores", divided by their row sum, e.g. kNN votes)."""
    check_images(images_uint8, "images_uint8")
    if outputs not in ("logits", "scores"):
        raise SslAugError(f"outputs must be 'logits' or 'scores', got {outputs!r}")

    def probs(view):
        with torch.no_grad():
            out = head(encode(encoder, view, batch_size=batch_size, normalize=normalize)).double()
        return out.softmax(1) if outputs == "logits" else out / out.sum(1, keepdim=True).clamp_min(1e-300)

    plain, tta = [], []
    for chunk in image_batches(images_uint8, batch_size):  # the encoder sees the same batches either way
        x = normalize_images(chunk, mean, std)
        plain.append(probs(x))
        vs = tta_views(x, views, crop_fraction)
        tta.append(sum(probs(v) for v in vs) / len(vs))
    return torch.cat(plain), torch.cat(tta)


def knn_head(train_features, train_labels, k: int = 200, temperature: float = 0.1,
             num_classes: int | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """A head for tta_predict(outputs="scores"): features (N, D) -> kNN vote scores (N, C)."""
    return lambda f: knn_classify(train_features, train_labels, f, k, temperature, num_classes)


def tta_evaluate(encoder: nn.Module, head, images_uint8: torch.Tensor, labels, mean, std,
                 views: str = "ten_crop", outputs: str = "logits", **kw) -> dict:
    """Accuracy and ECE (15 bins) with and without TTA: {"top1", "top1_tta", "top5", "top5_tta", "delta", "ece",
    "ece_tta", "views"} (for kNN heads the probabilities are the normalised vote shares)."""
    labels = torch.as_tensor(labels).long().cpu()
    if labels.ndim != 1 or labels.shape[0] != images_uint8.shape[0]:
        raise SslAugError(f"labels have shape {tuple(labels.shape)}; expected ({images_uint8.shape[0]},), one per image")
    plain, tta = tta_predict(encoder, head, images_uint8, mean, std, views, outputs, **kw)
    a, b = classification_metrics(plain, labels), classification_metrics(tta, labels)
    return {"top1": a["top1"], "top1_tta": b["top1"], "top5": a["top5"], "top5_tta": b["top5"],
            "delta": b["top1"] - a["top1"], "ece": expected_calibration_error(plain, labels),
            "ece_tta": expected_calibration_error(tta, labels), "views": views}


@register_evaluator("tta")
class TtaEvaluator(Evaluator):
    """Test-time augmentation (10-crop + flip by default): accuracy and ECE with and without, through the
    linear probe's classifier when the linear evaluator ran before, else through kNN votes."""

    @dataclass
    class Config(EvaluatorConfig):
        views: str = "ten_crop"
        k: int = 200  # kNN head (when no linear classifier is available)
        temperature: float = 0.1

    def run(self, ctx) -> dict:
        c = self.config
        te_x, te_y = ctx.test
        classifier = ctx.shared.get("linear_classifier")
        if classifier is not None:
            return {"head": "linear", **tta_evaluate(ctx.encoder, classifier, te_x, te_y, ctx.mean, ctx.std,
                                                     views=c.views, outputs="logits", batch_size=ctx.batch_size)}
        knn = ctx.results.get("knn") or {}
        k, t = knn.get("k", c.k), knn.get("temperature", c.temperature)
        head = knn_head(ctx.features("train"), ctx.train[1], k, t, ctx.num_classes)
        return {"head": f"knn k={k}", **tta_evaluate(ctx.encoder, head, te_x, te_y, ctx.mean, ctx.std,
                                                       views=c.views, outputs="scores", batch_size=ctx.batch_size)}

    def rows(self, m: dict) -> list:
        return [(f"TTA {m['views']} ({m['head']}): without", pct(m["top1"]), pct(m["top5"]), f"{m['ece']:.4f}"),
                (f"TTA {m['views']} ({m['head']}): with", pct(m["top1_tta"]), pct(m["top5_tta"]), f"{m['ece_tta']:.4f}")]
