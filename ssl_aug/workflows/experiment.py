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
from ssl_aug.data.image_store import pixels
from ssl_aug.data.subset import balanced_subset
from ssl_aug.errors import SslAugError
from ssl_aug.evaluation import KnnMonitor, evaluate_encoder, evaluators_from_config, flat_results  # noqa: F401
from ssl_aug.io import atomic_write_json
from ssl_aug.train import Trainer, load_training_data
from ssl_aug.train.signals import PhaseInterrupted, TrainingInterrupted, interrupt_on_signal, say_stop
from ssl_aug.train.fit import check_fits_machine
from ssl_aug.train.sanity import run_facts, sanity_warnings
from ssl_aug.train.setup import streams, training_device


def evaluate_backbone(backbone: torch.nn.Module, cfg: Config, train, test, device, progress: bool = True,
                      evaluators=None, run_dir=None) -> dict:
    """Evaluation of a trained backbone by the recipe's evaluators (or `evaluators`) -> flat metrics; figures
    (umap, neighbours) go to run_dir."""
    mean, std = normalization(cfg)
    report = evaluate_encoder(backbone.to(device), mean, std, (train.images, train.labels), (test.images, test.labels),
                              knn=False, progress=progress, seed=cfg.seed, test_groups=getattr(test, "groups", None),
                              classes=test.classes, group_names=getattr(test, "group_names", None),
                              evaluators=evaluators_from_config(cfg.eval) if evaluators is None else evaluators,
                              run_dir=run_dir)
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
    eval.json and return the results. The run folder is locked throughout (ssl_aug.runlock)."""
    run_dir = Path(run_dir or cfg.output_dir)
    final_evaluators = evaluators_from_config(cfg.eval)  # unknown names / bad keys: one line before any work
    from ssl_aug.runlock import hold_run_folder

    phase = {"trained": None}  # set to the Trainer once training has ended
    with hold_run_folder(run_dir, enabled=dist.is_main()):
        try:
            with interrupt_on_signal():
                return _run_experiment(cfg, run_dir, resume, progress, phase, final_evaluators)
        except PhaseInterrupted as stop:
            _interrupted(stop.signum, run_dir, phase["trained"])


def _interrupted(signum: int, run_dir: Path, trainer) -> None:
    """A signal outside the training loop: one line saying what is saved and how to continue."""
    import signal

    name = signal.Signals(signum).name
    if trainer is None:
        line = (f"ssl-aug: {name}: stopped while preparing the run (data, model); nothing new was trained; "
                f"start it again with the same command (plus --resume if output_dir {run_dir} has checkpoints)")
    else:
        line = (f"ssl-aug: {name}: stopped during the final evaluation; training is complete and saved "
                f"({run_dir / 'checkpoints' / 'last.pt'}, step {trainer.step}); finish the evaluation with the same "
                f"command plus --resume (output_dir {run_dir})")
    if dist.is_main():
        say_stop(line)
    raise TrainingInterrupted(signum, trainer.step if trainer else 0, None)


def _run_experiment(cfg: Config, run_dir: Path, resume: bool, progress: bool, phase: dict, final_evaluators) -> dict:
    epoch_evaluators = [e for e in final_evaluators if e.config.every > 0]
    train = None if streams(cfg) else load_training_data(cfg)
    evaluate = bool(cfg.eval.knn_every or final_evaluators)
    bank_set = labelled_bank(cfg, train) if evaluate else None
    test = None
    if evaluate:  # the training split held out for testing is the set already loaded, never a second copy
        same = cfg.eval.test_split == cfg.data.split
        test = train if same and train is not None else bank_set if cfg.eval.test_split == "train" and train is None \
            else load_training_data(cfg, split=cfg.eval.test_split)
    from ssl_aug.workflows.sizes import check_sizes  # size/count keys against the loaded data: one line each

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
        monitor = KnnMonitor(pixels(bank_set.images[bank]), bank_set.labels[bank], pixels(test.images[query]),
                             test.labels[query],
                             *normalization(cfg), k=cfg.eval.knn_k, temperature=cfg.eval.knn_temperature,
                             self_index=self_index)
        callbacks.append(lambda trainer, epoch: monitor(trainer.method.backbone)  # rank 0 only (Trainer)
                         if epoch % cfg.eval.knn_every == 0 else {})
    if epoch_evaluators:  # evaluators with `every` > 0, on the monitor's class-balanced bank / query subsets
        bank = balanced_subset(bank_set.labels, min(cfg.eval.monitor_train, len(bank_set.labels)), cfg.seed)
        query = balanced_subset(test.labels, min(cfg.eval.monitor_test, len(test.labels)), cfg.seed)
        monitor_bank = (pixels(bank_set.images[bank]), bank_set.labels[bank])  # decoded once (an ImageStore)
        monitor_query = (pixels(test.images[query]), test.labels[query])

        def run_epoch_evaluators(trainer, epoch):
            due = [e for e in epoch_evaluators if epoch % e.config.every == 0]
            if not due:
                return {}
            report = evaluate_encoder(trainer.method.backbone, *normalization(cfg), monitor_bank, monitor_query,
                                      knn=False, progress=False, seed=cfg.seed, evaluators=due)
            return {f"monitor_{k}": v for k, v in flat_results(report).items()}

        callbacks.append(run_epoch_evaluators)
    hooks = []
    if cfg.eval.online_linear:
        from ssl_aug.evaluation.online_linear import OnlineLinearProbe

        if train is None:
            raise SslAugError("eval.online_linear needs the training set in memory; it does not work with data.stream")
        hooks.append(OnlineLinearProbe(train.labels, len(train.classes)))
    trainer = Trainer(cfg, run_dir, callbacks=callbacks, progress=progress, train_data=train, hooks=hooks)
    if trainer.is_main and train is not None and not (run_dir / "views.png").exists():
        from ssl_aug.workflows.viewgrid import write_view_grid  # what the augmentation does, next to the run's results

        write_view_grid(cfg, run_dir / "views.png", n=min(8, len(train.labels)), seed=cfg.seed, data=train)
    start = time.perf_counter()
    final = trainer.fit(resume=resume)
    phase["trained"] = trainer
    if trainer.is_main:  # loss / lr / kNN monitor curves next to metrics.jsonl (skipped without matplotlib)
        from ssl_aug.evaluation.plots import plot_training_curves

        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
        plot_training_curves(records, run_dir / "curves.png",  # titled by what trained, not the recipe text
                             title=f"{run_dir.name}: {cfg.method['name']}, {cfg.model.backbone}")
        if final.get("loss") is None:  # a resume with only the evaluation left: the last logged step's loss
            final["loss"] = next((r["loss"] for r in reversed(records) if r.get("type") == "step"), None)
    epochs = trainer.step / trainer.steps_per_epoch  # what ran, also when train.max_steps cut an epoch
    results = {"train_time_s": round(time.perf_counter() - start, 2), "steps": trainer.step,
               "epochs": int(epochs) if epochs.is_integer() else round(epochs, 3), "final_loss": final.get("loss")}
    if trainer.is_main and final_evaluators:
        if progress:
            names = ", ".join(f"kNN (k={cfg.eval.knn_k})" if e.name == "knn" else e.name for e in final_evaluators)
            print(f"evaluating: {names} on {len(test)} {cfg.eval.test_split} images against "
                  f"{len(bank_set)} training images (eval.final_knn = false skips kNN)", file=sys.stderr, flush=True)
        start = time.perf_counter()
        results.update(evaluate_backbone(trainer.method.backbone, cfg, bank_set, test, trainer.device, progress,
                                         final_evaluators, run_dir=run_dir))
        results["eval_time_s"] = round(time.perf_counter() - start, 2)
    if trainer.is_main:
        atomic_write_json(run_dir / "eval.json", results)
    return results
