"""One experiment = train a recipe, then evaluate its backbone; the unit that `ssl-aug train`, the
quickstart and the ablation runner call. Writes eval.json next to the run's checkpoints."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from ssl_aug import distributed as dist
from ssl_aug.augment.recipe import normalization
from ssl_aug.config import Config
from ssl_aug.data import ImageDataset
from ssl_aug.data.subset import balanced_subset
from ssl_aug.errors import SslAugError
from ssl_aug.evaluation import KnnMonitor, evaluate_encoder
from ssl_aug.io import atomic_write_json
from ssl_aug.train import Trainer, load_training_data
from ssl_aug.train.fit import check_fits_machine
from ssl_aug.train.sanity import run_facts, sanity_warnings
from ssl_aug.train.setup import training_device


def flat_results(report: dict) -> dict:
    """evaluate_encoder's nested report -> the flat scalar metrics tables are made of
    (knn_top1, knn_top5, linear_top1, linear_top5, linear_ece, invariance_<family>, and with groups
    knn_/linear_worst_group_acc, _mean_gap, _max_gap)."""
    flat = {}
    for section in ("knn", "linear", "tta"):
        for key, value in (report.get(section) or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                flat[f"{section}_{key}"] = value
    for family, values in ((report.get("invariance") or {}).get("families") or {}).items():
        flat[f"invariance_{family}"] = values["score"]
    for section in ("knn", "linear"):  # subgroup metrics (data sets with groups)
        for key in ("worst_group_acc", "mean_gap", "max_gap"):
            if key in ((report.get(section) or {}).get("groups") or {}):
                flat[f"{section}_{key}"] = report[section]["groups"][key]
    return flat


def evaluate_backbone(backbone: torch.nn.Module, cfg: Config, train, test, device, progress: bool = True) -> dict:
    """Final evaluation of a trained backbone: kNN, plus the linear probe / invariance probe on request."""
    mean, std = normalization(cfg)
    report = evaluate_encoder(backbone.to(device), mean, std, (train.images, train.labels), (test.images, test.labels),
                              knn=True, linear=cfg.eval.linear, invariance=cfg.eval.invariance, tta=cfg.eval.tta,
                              invariance_ops=list(cfg.eval.invariance_ops),
                              ks=(cfg.eval.knn_k,), temperature=cfg.eval.knn_temperature, progress=progress,
                              seed=cfg.seed, test_groups=getattr(test, "groups", None), classes=test.classes,
                              group_names=getattr(test, "group_names", None),
                              knn_kw={"index": cfg.eval.knn_index, "nlist": cfg.eval.knn_nlist or None,
                                      "nprobe": cfg.eval.knn_nprobe})
    return flat_results(report)


def labelled_bank(cfg: Config, train: ImageDataset | None) -> ImageDataset:
    """The labelled images evaluation uses as its kNN bank / probe training set: the training split's
    labelled images, or (when it has none, e.g. stl10 'unlabeled', or it is streamed) the 'train' split."""
    if train is None or not bool((train.labels >= 0).any()):
        if cfg.data.split == "train" and train is not None:
            raise SslAugError(f"data set {cfg.data.name!r} split 'train' has no labels, so it cannot be evaluated: "
                              "set eval.final_knn = false and eval.knn_every = 0")
        train = load_training_data(cfg, split="train")
    keep = train.labels >= 0
    if bool(keep.all()):
        return train
    return ImageDataset(images=train.images[keep], labels=train.labels[keep], classes=train.classes, name=train.name)


def run_experiment(cfg: Config, run_dir: str | Path | None = None, resume: bool = True, progress: bool = True) -> dict:
    """Train `cfg` in `run_dir` (resuming from its last checkpoint when `resume`), evaluate, write
    eval.json and return the results."""
    run_dir = Path(run_dir or cfg.output_dir)
    train = None if cfg.data.stream else load_training_data(cfg)
    evaluate = bool(cfg.eval.knn_every or cfg.eval.final_knn)
    bank_set = labelled_bank(cfg, train) if evaluate else None
    same_split = cfg.eval.test_split == cfg.data.split and train is not None
    test = (train if same_split else load_training_data(cfg, split=cfg.eval.test_split)) if evaluate else None
    from ssl_aug.sizes import check_sizes  # size/count keys against the loaded data: one line each

    notes = check_sizes(cfg, train, test, bank_set) + sanity_warnings(run_facts(cfg, train, bank_set))
    if dist.is_main():
        for note in notes:
            print(note, file=sys.stderr, flush=True)
    if train is not None:  # the memory / time estimate (stdout); refused in one line when it cannot fit
        world = dist.world_size()
        estimate = check_fits_machine(cfg, len(train), int(train.images.shape[-1]), training_device(cfg, world),
                                      world, name=f"the run {run_dir.name}")
        if dist.is_main():
            print(estimate, flush=True)
    callbacks = []
    if cfg.eval.knn_every:
        bank = balanced_subset(bank_set.labels, min(cfg.eval.monitor_train, len(bank_set.labels)), cfg.seed)
        query = balanced_subset(test.labels, min(cfg.eval.monitor_test, len(test.labels)), cfg.seed)
        self_index = None
        same = test is bank_set or (cfg.eval.test_split == cfg.data.split and len(test.labels) == len(bank_set.labels))
        if same:  # the monitor's queries are bank images: each leaves itself out of its vote
            self_index = torch.full((len(bank_set.labels),), -1, dtype=torch.long)
            self_index[bank] = torch.arange(len(bank))
            self_index = self_index[query]
        monitor = KnnMonitor(bank_set.images[bank], bank_set.labels[bank], test.images[query], test.labels[query],
                             *normalization(cfg), k=cfg.eval.knn_k, temperature=cfg.eval.knn_temperature,
                             self_index=self_index)
        callbacks.append(lambda trainer, epoch: monitor(trainer.method.backbone))  # rank 0 only (Trainer)
    hooks = []
    if cfg.eval.online_linear:
        from ssl_aug.evaluation.online_linear import OnlineLinearProbe

        if train is None:
            raise SslAugError("eval.online_linear needs the training set in memory; it does not work with data.stream")
        hooks.append(OnlineLinearProbe(train.labels, len(train.classes)))
    trainer = Trainer(cfg, run_dir, callbacks=callbacks, progress=progress, train_data=train, hooks=hooks)
    if trainer.is_main and train is not None and not (run_dir / "views.png").exists():
        from ssl_aug.viewgrid import write_view_grid  # what the augmentation does, next to the run's results

        write_view_grid(cfg, run_dir / "views.png", n=min(8, len(train.labels)), seed=cfg.seed, data=train)
    start = time.perf_counter()
    final = trainer.fit(resume=resume)
    if trainer.is_main:  # loss / lr / kNN monitor curves next to metrics.jsonl (skipped without matplotlib)
        from ssl_aug.plots import plot_training_curves

        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
        plot_training_curves(records, run_dir / "curves.png",  # titled by what trained, not the recipe text
                             title=f"{run_dir.name}: {cfg.method['name']}, {cfg.model.backbone}")
    epochs = trainer.step / trainer.steps_per_epoch  # what ran, also when train.max_steps cut an epoch
    results = {"train_time_s": round(time.perf_counter() - start, 2), "steps": trainer.step,
               "epochs": int(epochs) if epochs.is_integer() else round(epochs, 3), "final_loss": final.get("loss")}
    if trainer.is_main and cfg.eval.final_knn:
        if progress:
            print(f"evaluating: kNN (k={cfg.eval.knn_k}) of {len(test)} {cfg.eval.test_split} images against "
                  f"{len(bank_set)} training images" + (", linear probe" if cfg.eval.linear else "")
                  + (", invariance probe" if cfg.eval.invariance else "") + " (eval.final_knn = false skips this)",
                  file=sys.stderr, flush=True)
        start = time.perf_counter()
        results.update(evaluate_backbone(trainer.method.backbone, cfg, bank_set, test, trainer.device, progress))
        results["eval_time_s"] = round(time.perf_counter() - start, 2)
    if trainer.is_main:
        atomic_write_json(run_dir / "eval.json", results)
    return results
