"""One call that runs evaluators (ssl_aug.evaluation.base) on an encoder, and a Markdown report of the
results."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch
from torch import nn

from ssl_aug.data.image_store import same_images
from ssl_aug.errors import SslAugError
from ssl_aug.evaluation.base import (EVALUATORS, EvalContext, Evaluator, build_evaluator, get_evaluator,
                                     list_evaluators, pct)
from ssl_aug.evaluation.features import check_images
from ssl_aug.evaluation.groups import group_table
from ssl_aug.evaluation.invariance import InvarianceEvaluator
from ssl_aug.evaluation.knn import KnnEvaluator
from ssl_aug.evaluation.linear import LinearEvaluator
from ssl_aug.evaluation.tta import TtaEvaluator
from ssl_aug.registry import did_you_mean

__all__ = ["evaluate_encoder", "run_evaluators", "evaluators_from_config", "format_report", "flat_results"]


def _pair(split, name):
    if not (isinstance(split, (tuple, list)) and len(split) == 2):
        raise SslAugError(f"{name} must be an (images_uint8, labels) pair, got {type(split).__name__}")
    images, labels = split
    check_images(images, f"{name} images")
    labels = torch.as_tensor(labels).long().cpu()
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise SslAugError(f"{name} labels have shape {tuple(labels.shape)}; expected ({images.shape[0]},)")
    return images, labels


def run_evaluators(ctx: EvalContext, evaluators: Sequence[Evaluator]) -> dict:
    """Run `evaluators` in order on `ctx` -> {"num_train", "num_test", "dim", <name>: result, ...}."""
    out = {"num_train": ctx.train[0].shape[0], "num_test": ctx.test[0].shape[0], "dim": ctx.features("train").shape[1]}
    for evaluator in evaluators:
        out[evaluator.name] = ctx.results[evaluator.name] = evaluator.run(ctx)
    return out


def evaluate_encoder(encoder: nn.Module, mean, std, train, test, knn: bool = True, linear: bool = False,
                     tta: bool = False, invariance: bool = False, ks: Sequence[int] = (200,),
                     temperature: float = 0.1, num_classes: int | None = None, batch_size: int = 512,
                     amp: bool = False, cache_dir=None, progress: bool = True, linear_kw: dict | None = None,
                     tta_views: str = "ten_crop", invariance_images: int = 1000, seed: int = 0,
                     test_groups=None, classes=None, group_names=None, leave_one_out: bool | None = None,
                     knn_kw: dict | None = None, invariance_ops=None, evaluators: Sequence[Evaluator] = (),
                     run_dir=None) -> dict:
    """train/test: (images_uint8 (N,3,H,W) or an ImageStore, labels (N,)). Returns a JSON-friendly dict with the keys
    "knn", "linear", "tta", "invariance" for the evaluations that ran (+ "num_train", "num_test", "dim").
    TTA uses the linear classifier when linear=True, else kNN votes (first k); the invariance probe
    uses the first `invariance_images` test images. With test_groups (M,) the kNN (first k) and linear
    sections gain "groups": accuracy per (class, group), worst group and per-class gaps (evaluation.groups).
    leave_one_out: kNN queries never vote for their own bank row; None = automatic, on when the test
    images and labels are the train ones (e.g. eval.test_split = "train"). knn_kw: more knn_evaluate
    options (index "flat"/"ivf", nlist, nprobe). evaluators: more Evaluator instances, run after these.
    run_dir: where evaluators that draw figures (umap, neighbours) write them."""
    (tr_x, tr_y), (te_x, te_y) = _pair(train, "train"), _pair(test, "test")
    same = tr_x.shape == te_x.shape and torch.equal(tr_y, te_y) and same_images(tr_x, te_x)
    if leave_one_out is None:
        leave_one_out = same
    elif leave_one_out and not same:
        raise SslAugError(f"leave_one_out=True needs the test images and labels to be the train ones (same order); "
                          f"got {te_x.shape[0]} test vs {tr_x.shape[0]} train images that differ")
    ctx = EvalContext(encoder, mean, std, (tr_x, tr_y), (te_x, te_y), num_classes=num_classes,
                      batch_size=batch_size, amp=amp, seed=seed, progress=progress, cache_dir=cache_dir,
                      classes=classes, test_groups=test_groups, group_names=group_names, leave_one_out=leave_one_out,
                      run_dir=run_dir)
    chosen: list[Evaluator] = []
    if knn:
        kw = knn_kw or {}
        chosen.append(KnnEvaluator("knn", KnnEvaluator.Config(
            k=list(ks), temperature=temperature, index=kw.get("index", "flat"), nlist=kw.get("nlist") or 0,
            nprobe=kw.get("nprobe", 16))))
    if linear:
        chosen.append(LinearEvaluator("linear", LinearEvaluator.Config(**(linear_kw or {}))))
    if tta:
        chosen.append(TtaEvaluator("tta", TtaEvaluator.Config(views=tta_views, k=ks[0], temperature=temperature)))
    if invariance:
        chosen.append(InvarianceEvaluator("invariance", InvarianceEvaluator.Config(
            images=invariance_images, ops=list(invariance_ops or []))))
    return run_evaluators(ctx, chosen + list(evaluators))


def evaluators_from_config(eval_cfg, final: bool = True) -> list[Evaluator]:
    """The evaluators a recipe's [eval] section turns on, in order: knn (eval.final_knn with knn_k,
    knn_temperature, knn_index, knn_nlist, knn_nprobe), linear, tta, invariance (+ invariance_ops), then
    every `eval.<name>` of `eval_cfg.evaluators` (true or a table of its keys). final=False: only those with
    `every` > 0 (the per-epoch ones)."""
    fields = [f.name for f in dataclasses.fields(type(eval_cfg)) if f.name != "evaluators"]
    for name in eval_cfg.evaluators:
        if name not in EVALUATORS:
            raise SslAugError(f"unknown recipe key 'eval.{name}';{did_you_mean(name, fields + list_evaluators())}"
                              f" allowed: {', '.join(fields)}, or an evaluator: {', '.join(list_evaluators())}")
    if eval_cfg.invariance_ops:  # checked also while the invariance probe is off: a typo is one line now
        InvarianceEvaluator.Config(ops=list(eval_cfg.invariance_ops))
    chosen: list[Evaluator] = []
    tables = dict(eval_cfg.evaluators)
    if eval_cfg.final_knn or "knn" in tables:
        table = {"k": [eval_cfg.knn_k], "temperature": eval_cfg.knn_temperature, "index": eval_cfg.knn_index,
                 "nlist": eval_cfg.knn_nlist, "nprobe": eval_cfg.knn_nprobe}
        table.update(tables.pop("knn", {}) if isinstance(tables.get("knn"), dict) else tables.pop("knn", None) or {})
        chosen.append(build_evaluator("knn", table))
    for name, on in (("linear", eval_cfg.linear), ("tta", eval_cfg.tta), ("invariance", eval_cfg.invariance)):
        if on or name in tables:
            table = tables.pop(name, True)
            if name == "invariance" and eval_cfg.invariance_ops:
                table = {"ops": list(eval_cfg.invariance_ops), **(table if isinstance(table, dict) else {})}
            if table is not False:
                chosen.append(build_evaluator(name, table))
    chosen += [build_evaluator(name, table) for name, table in tables.items() if table is not False]
    return chosen if final else [e for e in chosen if e.config.every > 0]


def format_report(results: dict) -> str:
    """Markdown summary of evaluate_encoder's result: a metrics table (+ the invariance table)."""
    rows, sections = [], []
    for name, result in results.items():
        if name in list_evaluators() and isinstance(result, dict):
            evaluator = get_evaluator(name)(name)
            rows += evaluator.rows(result)
            if evaluator.section(result):
                sections.append(evaluator.section(result))
    if "finetune" in results:
        m = results["finetune"]
        rows.append((f"fine-tuned (mix={m['config']['mix']}, {m['num_labelled']} labels)", pct(m["top1"]),
                     pct(m["top5"]), f"{m['ece']:.4f}"))
        if "tta" in m:
            rows.append((f"fine-tuned + TTA {m['tta']['views']}", pct(m["tta"]["top1"]), pct(m["tta"]["top5"]),
                         f"{m['tta']['ece']:.4f}"))
    lines = ["| evaluation | top-1 % | top-5 % | ECE |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    text = "\n".join(lines)
    if group_table(results):
        text += "\n\nSubgroups (accuracy per (class, group) cell):\n\n" + group_table(results)
    for section in sections:
        text += "\n\n" + section
    return text


def flat_results(report: dict) -> dict:
    """A nested report -> the flat scalar metrics ablation tables compare (each evaluator's `flat`: e.g.
    knn_top1, linear_ece, invariance_<family>, and with subgroups knn_/linear_worst_group_acc, _mean_gap,
    _max_gap)."""
    flat = {}
    for name, result in report.items():
        if name in list_evaluators() and isinstance(result, dict):
            flat.update(get_evaluator(name)(name).flat(result))
    for section in ("knn", "linear"):  # subgroup metrics (data sets with groups)
        for key in ("worst_group_acc", "mean_gap", "max_gap"):
            if key in ((report.get(section) or {}).get("groups") or {}):
                flat[f"{section}_{key}"] = report[section]["groups"][key]
    return flat
