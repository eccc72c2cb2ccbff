"""One experiment = train a recipe, then evaluate its backbone; the unit that `ssl-aug train`, the
quickstart and the ablation runner call. Writes eval.json next to the run's checkpoints."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from ssl_aug.config import Config
from ssl_aug.evaluation import KnnMonitor, extract_features, invariance_probe, knn_evaluate, linear_probe
from ssl_aug.train import Trainer, balanced_subset, load_training_data, normalization


def write_json_atomic(data: dict, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def evaluate_backbone(backbone: torch.nn.Module, cfg: Config, train, test, device, progress: bool = True) -> dict:
    """Final evaluation of a trained backbone: kNN (always), linear probe and invariance on request."""
    mean, std = normalization(cfg)
    results = {}
    train_f = extract_features(backbone, train.images, mean, std, device=device, progress=progress)
    test_f = extract_features(backbone, test.images, mean, std, device=device, progress=progress)
    knn = knn_evaluate(train_f, train.labels, test_f, test.labels, ks=(cfg.eval.knn_k,),
                       temperature=cfg.eval.knn_temperature)
    results.update({f"knn_{key}": value for key, value in knn.items() if not isinstance(value, (list, dict))})
    results["knn_top1"] = knn["top1"]
    if cfg.eval.linear:
        lin = linear_probe(train_f, train.labels, test_f, test.labels, seed=cfg.seed)
        results.update({f"linear_{key}": value for key, value in lin.items() if not isinstance(value, (list, dict))})
    if cfg.eval.invariance:
        count = min(len(test.labels), 1000)
        probe_images = test.images[balanced_subset(test.labels, count, cfg.seed)]
        scores = invariance_probe(backbone, probe_images, mean, std, device=device, seed=cfg.seed)
        results.update({f"invariance_{key}": value for key, value in scores.items()})
    return results


def run_experiment(cfg: Config, run_dir: str | Path | None = None, resume: bool = True, progress: bool = True) -> dict:
    """Train `cfg` in `run_dir` (resuming from its last checkpoint when `resume`), evaluate, write
    eval.json and return the results."""
    run_dir = Path(run_dir or cfg.output_dir)
    train = load_training_data(cfg, split="train")
    test = load_training_data(cfg, split=cfg.eval.test_split)
    callbacks = []
    if cfg.eval.knn_every:
        monitor = KnnMonitor(train.images, train.labels, test.images, test.labels, *normalization(cfg),
                             k=cfg.eval.knn_k, temperature=cfg.eval.knn_temperature,
                             train_size=cfg.eval.monitor_train, test_size=cfg.eval.monitor_test, seed=cfg.seed)
        callbacks.append(lambda trainer, epoch: monitor(trainer.method.backbone))
    trainer = Trainer(cfg, run_dir, callbacks=callbacks, progress=progress, train_data=train)
    start = time.perf_counter()
    final = trainer.fit(resume=resume)
    results = {"train_time_s": round(time.perf_counter() - start, 2), "steps": trainer.step,
               "epochs": trainer.epoch, "final_loss": final.get("loss")}
    if trainer.is_main and cfg.eval.final_knn:
        start = time.perf_counter()
        results.update(evaluate_backbone(trainer.method.backbone, cfg, train, test, trainer.device, progress))
        results["eval_time_s"] = round(time.perf_counter() - start, 2)
    if trainer.is_main:
        write_json_atomic(results, run_dir / "eval.json")
    return results
