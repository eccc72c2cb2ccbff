"""One call that runs the chosen evaluations on an encoder and a Markdown report of the results."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ssl_aug.errors import SslAugError
from ssl_aug.evaluation.features import check_images, extract_features
from ssl_aug.evaluation.groups import group_metrics, group_table, predictions
from ssl_aug.evaluation.invariance import invariance_probe, invariance_table
from ssl_aug.evaluation.knn import knn_classify, knn_evaluate
from ssl_aug.evaluation.linear import linear_probe
from ssl_aug.evaluation.tta import knn_head, tta_evaluate


def _pair(split, name):
    if not (isinstance(split, (tuple, list)) and len(split) == 2):
        raise SslAugError(f"{name} must be an (images_uint8, labels) pair, got {type(split).__name__}")
    images, labels = split
    check_images(images, f"{name} images")
    labels = torch.as_tensor(labels).long().cpu()
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise SslAugError(f"{name} labels have shape {tuple(labels.shape)}; expected ({images.shape[0]},)")
    return images, labels


def evaluate_encoder(encoder: nn.Module, mean, std, train, test, knn: bool = True, linear: bool = False,
                     tta: bool = False, invariance: bool = False, ks: Sequence[int] = (200,),
                     temperature: float = 0.1, num_classes: int | None = None, batch_size: int = 512,
                     amp: bool = False, cache_dir=None, progress: bool = True, linear_kw: dict | None = None,
                     tta_views: str = "ten_crop", invariance_images: int = 1000, seed: int = 0,
                     test_groups=None, classes=None, group_names=None, leave_one_out: bool | None = None,
                     knn_kw: dict | None = None, invariance_ops=None) -> dict:
    """train/test: (images_uint8 (N,3,H,W), labels (N,)). Returns a JSON-friendly dict with the keys
    "knn", "linear", "tta", "invariance" for the evaluations that ran (+ "num_train", "num_test", "dim").
    TTA uses the linear classifier when linear=True, else kNN votes (first k); the invariance probe
    uses the first `invariance_images` test images. With test_groups (M,) the kNN (first k) and linear
    sections gain "groups": accuracy per (class, group), worst group and per-class gaps (evaluation.groups).
    leave_one_out: kNN queries never vote for their own bank row; None = automatic, on when the test
    images and labels are the train ones (e.g. eval.test_split = "train"). knn_kw: more knn_evaluate
    options (index "flat"/"ivf", nlist, nprobe)."""
    (tr_x, tr_y), (te_x, te_y) = _pair(train, "train"), _pair(test, "test")
    same = tr_x.shape == te_x.shape and torch.equal(tr_y, te_y) and torch.equal(tr_x, te_x)
    if leave_one_out is None:
        leave_one_out = same
    elif leave_one_out and not same:
        raise SslAugError(f"leave_one_out=True needs the test images and labels to be the train ones (same order); "
                          f"got {te_x.shape[0]} test vs {tr_x.shape[0]} train images that differ")
    self_index = True if leave_one_out else None
    fkw = dict(batch_size=batch_size, amp=amp, cache_dir=cache_dir, progress=progress)
    tr_f = extract_features(encoder, tr_x, mean, std, **fkw)
    te_f = extract_features(encoder, te_x, mean, std, **fkw)
    c = int(num_classes or max(int(tr_y.max()), int(te_y.max())) + 1)
    out = {"num_train": tr_x.shape[0], "num_test": te_x.shape[0], "dim": tr_f.shape[1]}
    classifier = None
    if knn:
        out["knn"] = knn_evaluate(tr_f, tr_y, te_f, te_y, ks=ks, temperature=temperature, num_classes=c,
                                  self_index=self_index, **(knn_kw or {}))
        if test_groups is not None:
            pred = predictions(knn_classify(tr_f, tr_y, te_f, ks[0], temperature, c, self_index=self_index,
                                            **(knn_kw or {})))
            out["knn"]["groups"] = group_metrics(pred, te_y, test_groups, classes, group_names)
    if linear:
        r = linear_probe(tr_f, tr_y, te_f, te_y, num_classes=c, seed=seed, **(linear_kw or {}))
        classifier = r.pop("classifier")
        out["linear"] = r
        if test_groups is not None:
            with torch.no_grad():
                pred = predictions(classifier(te_f))
            out["linear"]["groups"] = group_metrics(pred, te_y, test_groups, classes, group_names)
    if tta:
        if classifier is not None:
            out["tta"] = {"head": "linear", **tta_evaluate(encoder, classifier, te_x, te_y, mean, std, views=tta_views,
                                                             outputs="logits", batch_size=batch_size)}
        else:
            head = knn_head(tr_f, tr_y, ks[0], temperature, c)
            out["tta"] = {"head": f"knn k={ks[0]}", **tta_evaluate(encoder, head, te_x, te_y, mean, std, views=tta_views,
                                                                    outputs="scores", batch_size=batch_size)}
    if invariance:
        out["invariance"] = invariance_probe(encoder, te_x[:invariance_images], mean, std, batch_size=batch_size,
                                             seed=seed, amp=amp, ops=invariance_ops or None)
    return out


def _pct(x) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


def format_report(results: dict) -> str:
    """Markdown summary of evaluate_encoder's result: a metrics table (+ the invariance table)."""
    rows = []
    if "knn" in results:
        r = results["knn"]
        how = ", leave-one-out" if r.get("leave_one_out") else ""
        if "ivf_agreement" in r:
            how += (f", IVF index: top-1 agrees with exact search on {100 * r['ivf_agreement']:.1f}% of "
                    f"{r['ivf_agreement_queries']} sampled queries")
        for k, m in r["by_k"].items():
            rows.append((f"kNN (k={k}, T={r['temperature']:g}{how})", _pct(m["top1"]), _pct(m["top5"]), "-"))
    if "linear" in results:
        m = results["linear"]
        rows.append((f"linear probe (wd={m['weight_decay']:g})", _pct(m["top1"]), _pct(m["top5"]), f"{m['ece']:.4f}"))
    if "tta" in results:
        m = results["tta"]
        rows.append((f"TTA {m['views']} ({m['head']}): without", _pct(m["top1"]), _pct(m["top5"]), f"{m['ece']:.4f}"))
        rows.append((f"TTA {m['views']} ({m['head']}): with", _pct(m["top1_tta"]), _pct(m["top5_tta"]), f"{m['ece_tta']:.4f}"))
    if "finetune" in results:
        m = results["finetune"]
        rows.append((f"fine-tuned (mix={m['config']['mix']}, {m['num_labelled']} labels)", _pct(m["top1"]),
                     _pct(m["top5"]), f"{m['ece']:.4f}"))
        if "tta" in m:
            rows.append((f"fine-tuned + TTA {m['tta']['views']}", _pct(m["tta"]["top1"]), _pct(m["tta"]["top5"]),
                         f"{m['tta']['ece']:.4f}"))
    lines = ["| evaluation | top-1 % | top-5 % | ECE |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    text = "\n".join(lines)
    if group_table(results):
        text += "\n\nSubgroups (accuracy per (class, group) cell):\n\n" + group_table(results)
    if "invariance" in results:
        text += "\n\nInvariance (1 = invariant, 0 = as different as a random image):\n\n"
        text += invariance_table({"encoder": results["invariance"]})
    return text
