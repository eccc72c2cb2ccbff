"""The Optuna study of a search: TPE sampler, successive-halving / Hyperband pruner fed every epoch by the
objective on the validation split, SQLite storage in the search directory, resumable.

Search directory layout:
    search.json              the resolved spec (its hash must match on resume)
    study.db                 Optuna's SQLite storage (every trial, its parameters, intermediate values)
    trials/trial_NNNN/       an ordinary run directory per trial: config.json, metrics.jsonl,
                             checkpoints/, objective.jsonl (scores per epoch), eval.json (final scores)

A trial finished (complete, pruned, or failed with a recorded error) is never rerun. A trial still
RUNNING when a search starts was left by a killed process (or FAILed without a recorded error: a crash
outside training, e.g. a bug): it is marked interrupted (not counted) and its parameters are enqueued
again with its run directory, so it resumes from its last checkpoint.
"""

from __future__ import annotations

import json
import math
import time
import traceback
from pathlib import Path

import torch

from ssl_aug.config import config_from_dict, set_dotted
from ssl_aug.errors import SslAugError
from ssl_aug.io import append_line, atomic_write_json, atomic_write_text
from ssl_aug.train.signals import PhaseInterrupted, TrainingInterrupted
from ssl_aug.workflows.search.objectives import ObjectiveData, carve_validation, check_objective, compute_scores
from ssl_aug.workflows.search.space import apply_point, base_point
from ssl_aug.workflows.search.spec import SearchSpec, load_search, spec_hash

__all__ = ["require_optuna", "prepare_search", "run_worker", "open_study", "finished_trials", "STUDY_NAME"]

STUDY_NAME = "ssl_aug_search"
SPEC_FILE = "search.json"


def require_optuna():
    try:
        import optuna
    except ImportError:
        raise SslAugError("ssl-aug search needs Optuna: pip install 'ssl_aug[search]' (or pip install optuna)") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def _storage(search_dir: Path):
    optuna = require_optuna()
    url = f"sqlite:///{(search_dir / 'study.db').resolve()}"
    return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 120}})


def _pruner(spec: SearchSpec):
    optuna = require_optuna()
    p = spec.raw["pruner"]
    if p["name"] == "none":
        return optuna.pruners.NopPruner()
    if p["name"] == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=p["min_resource"], max_resource=spec.epochs,
                                              reduction_factor=p["reduction_factor"])
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=p["min_resource"],
                                                  reduction_factor=p["reduction_factor"])


def open_study(spec: SearchSpec, search_dir: Path, seed_offset: int = 0):
    optuna = require_optuna()
    sampler = optuna.samplers.TPESampler(seed=spec.raw["seed"] * 1000 + seed_offset,
                                         n_startup_trials=spec.raw["sampler"]["n_startup_trials"])
    return optuna.create_study(study_name=STUDY_NAME, storage=_storage(search_dir), sampler=sampler,
                               pruner=_pruner(spec), direction="maximize", load_if_exists=True)


def finished_trials(study) -> list:
    """Trials that count towards the budget: complete, pruned, or failed with a recorded error."""
    from optuna.trial import TrialState

    return [t for t in study.get_trials(deepcopy=False)
            if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
            or (t.state == TrialState.FAIL and "error" in t.user_attrs)]


def prepare_search(spec: SearchSpec) -> Path:
    """Create (or check, on resume) the search directory; recover trials left RUNNING by a killed search.
    Everything is validated before the first file is written."""
    require_optuna()  # one line when the optional extra is missing
    from optuna.trial import TrialState

    search_dir = spec.out_dir
    record = {"spec": spec.raw, "base": spec.base, "spec_path": str(spec.path), "hash": spec_hash(spec.raw, spec.base)}
    spec_file = search_dir / SPEC_FILE
    if spec_file.is_file():
        old = json.loads(spec_file.read_text())
        if old.get("hash") != record["hash"]:
            raise SslAugError(f"search directory {search_dir} holds a search with another spec (space, objective, "
                              f"base recipe or budget changed); use another output_dir or delete the folder")
    elif (search_dir / "study.db").exists():
        raise SslAugError(f"search directory {search_dir} has a study.db but no {SPEC_FILE}; use another output_dir")
    else:
        _load_objective_data(spec)  # the objective vs the data (labels) is checked before anything is written
    search_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(spec_file, record)
    study = open_study(spec, search_dir)
    trials = study.get_trials(deepcopy=False)
    if not trials:
        point = base_point(spec.base, spec.params)
        if point is not None:  # the base recipe first: the search's reference point
            study.enqueue_trial(point, user_attrs={"baseline": True})
    rerun = {t.user_attrs.get("resumed_from") for t in trials}
    for t in trials:  # killed (still RUNNING) or stopped/crashed (FAIL without a recorded error): run them again
        stopped = t.state == TrialState.FAIL and "error" not in t.user_attrs
        if (t.state == TrialState.RUNNING or stopped) and t.number not in rerun:
            if t.state == TrialState.RUNNING:
                study._storage.set_trial_user_attr(t._trial_id, "interrupted", True)
                study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            attrs = {"resumed_from": t.number, **{k: v for k, v in t.user_attrs.items() if k in ("run_dir", "baseline")}}
            study.enqueue_trial(t.params, user_attrs=attrs)
    return search_dir


def _load_objective_data(spec: SearchSpec, device=None) -> tuple[ObjectiveData, object]:
    """(scoring data, the training images left after carving the validation split)."""
    from ssl_aug.augment.recipe import views_of
    from ssl_aug.data import ImageDataset
    from ssl_aug.train import load_training_data

    cfg = config_from_dict(spec.base)
    train = load_training_data(cfg, split="train").decoded()
    labelled = check_objective(spec.raw["objective"], train.labels)
    keep, val = carve_validation(train.labels, spec.raw["validation"], spec.raw["seed"], labelled)
    rest = ImageDataset(images=train.images[keep], labels=train.labels[keep], classes=train.classes, name=train.name)
    n_bank = min(len(keep), max(cfg.eval.monitor_train, 1))
    bank = keep[torch.randperm(len(keep), generator=torch.Generator().manual_seed(spec.raw["seed"]))[:n_bank]]
    data = ObjectiveData(train.images[bank], train.labels[bank], train.images[val], train.labels[val],
                         views_of(cfg).build(), labelled, k=cfg.eval.knn_k,
                         temperature=cfg.eval.knn_temperature, seed=spec.raw["seed"])
    return data, rest


def _read_reports(run_dir: Path) -> dict[int, dict]:
    path = run_dir / "objective.jsonl"
    out = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
                out[int(rec["epoch"])] = rec
            except (json.JSONDecodeError, KeyError, ValueError):
                continue  # a line cut by a kill
    return out


class _TrialRunner:
    """Runs one Optuna trial as an ordinary training run and scores it."""

    def __init__(self, spec: SearchSpec, search_dir: Path, data: ObjectiveData, train_data, progress: bool):
        self.spec, self.search_dir, self.data, self.train_data, self.progress = spec, search_dir, data, train_data, progress
        self.key = spec.raw["objective"]

    def __call__(self, trial) -> float:
        optuna = require_optuna()
        from ssl_aug.augment.recipe import normalization
        from ssl_aug.train import Trainer

        point = {p.key: p.suggest(trial) for p in self.spec.params}
        rel = trial.user_attrs.get("run_dir") or f"trials/trial_{trial.number:04d}"
        trial.set_user_attr("run_dir", rel)
        run_dir = self.search_dir / rel
        recipe = apply_point(self.spec.base, self.spec.params, point)
        set_dotted(recipe, "output_dir", str(run_dir))
        set_dotted(recipe, "seed", self.spec.raw["seed"])
        set_dotted(recipe, "eval.knn_every", 1)
        cfg = config_from_dict(recipe)
        mean, std = normalization(cfg)
        reports = _read_reports(run_dir)
        for epoch in sorted(reports):  # a resumed trial: its earlier epochs feed the pruner again
            trial.report(reports[epoch][self.key], epoch)
        last: dict = {}

        def score(trainer, epoch: int) -> dict:
            final = epoch >= cfg.train.epochs
            scores = compute_scores(trainer.method.backbone, self.data, mean, std,
                                    rotation=final or self.key == "rotation")
            append_line(run_dir / "objective.jsonl", json.dumps({"epoch": epoch, "step": trainer.step, **scores}),
                        what="objective log")
            last.update(epoch=epoch, step=trainer.step, scores=scores)
            trial.report(scores[self.key], epoch)
            if not final and trial.should_prune():
                self._write_eval(run_dir, scores, epoch, pruned=True)
                raise optuna.TrialPruned(f"pruned after epoch {epoch}: {self.key} = {scores[self.key]:.4f}")
            return {f"search_{k}": v for k, v in scores.items()}

        start = time.perf_counter()
        try:
            trainer = Trainer(cfg, run_dir, callbacks=[score], progress=self.progress, train_data=self.train_data)
            trainer.fit(resume=True)
        except (SslAugError, RuntimeError, ValueError) as exc:
            error = f"{type(exc).__name__}: {exc}".splitlines()[0]
            trial.set_user_attr("error", error)
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(run_dir / "error.txt", error + "\n\n" + traceback.format_exc())
            print(f"trial {trial.number} failed: {error} (recorded in {run_dir / 'error.txt'})", flush=True)
            return float("nan")
        if last.get("step") != trainer.step or "rotation" not in last.get("scores", {}):
            last["scores"] = compute_scores(trainer.method.backbone, self.data, mean, std)
        scores = last["scores"]
        for k, v in scores.items():
            trial.set_user_attr(k, v)
        trial.set_user_attr("train_time_s", round(time.perf_counter() - start, 2))
        self._write_eval(run_dir, scores, trainer.epoch, pruned=False, steps=trainer.step)
        return scores[self.key]

    def _write_eval(self, run_dir: Path, scores: dict, epoch: int, pruned: bool, steps: int | None = None) -> None:
        atomic_write_json(run_dir / "eval.json", {
            "objective": self.key, "value": scores[self.key], "pruned": pruned, "epochs": epoch, "steps": steps,
            "scored_on": f"validation split: {self.spec.raw['validation']} training images held out "
                         f"(seed {self.spec.raw['seed']}); trained on the rest", **scores})


def run_worker(search_dir: str, worker: int = 0, threads: int = 0, progress: bool = False) -> int:
    """One search worker: run trials until the study has `trials` finished ones. Several workers (local
    processes or Ray tasks) share the study through its SQLite file. Returns the trials this worker ran."""
    search_dir = Path(search_dir)
    record = json.loads((search_dir / SPEC_FILE).read_text())
    spec = load_search({**record["spec"], "base": record["base"], "base_overrides": {}, "output_dir": str(search_dir),
                        "_path": record["spec_path"]}, validate=False)
    if threads:
        torch.set_num_threads(threads)
    from optuna.trial import TrialState

    data, train_data = _load_objective_data(spec)
    existing = len(open_study(spec, search_dir).get_trials(deepcopy=False))
    study = open_study(spec, search_dir, seed_offset=1 + worker + 100 * existing)  # no replayed draws on resume
    runner = _TrialRunner(spec, search_dir, data, train_data, progress)
    ran = 0
    while True:
        trials = study.get_trials(deepcopy=False)
        running = sum(t.state == TrialState.RUNNING for t in trials)
        if len(finished_trials(study)) + running >= spec.raw["trials"]:
            return ran
        run_one_trial(study, runner, search_dir / ".ask.lock")
        ran += 1
        done = len(finished_trials(study))
        best = _best_value(study)
        print(f"[worker {worker}] {done}/{spec.raw['trials']} trials finished"
              + (f"; best {spec.raw['objective']} = {best:.4f}" if best is not None else ""), flush=True)


def run_one_trial(study, runner, lock_path: Path) -> None:
    """Ask for a trial under a file lock (workers sharing the SQLite study never pop the same enqueued
    trial: two processes would run one trial in one folder), run it, tell the result."""
    import fcntl

    import optuna
    from optuna.trial import TrialState

    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            trial = study.ask()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    try:
        value = runner(trial)
    except optuna.TrialPruned:
        study.tell(trial, state=TrialState.PRUNED)
        return
    except BaseException as exc:
        trial.set_user_attr("interrupted", True)  # not a result; no "error" attribute: the next search runs it again
        study.tell(trial, state=TrialState.FAIL)
        if isinstance(exc, (TrainingInterrupted, PhaseInterrupted)):
            exc.trial = trial.number  # the stop line names it
        raise
    if value is None or (isinstance(value, float) and math.isnan(value)):
        study.tell(trial, state=TrialState.FAIL)  # the trial recorded its error; nan is not a result
    else:
        study.tell(trial, value)


def _best_value(study):
    from optuna.trial import TrialState

    values = [t.value for t in study.get_trials(deepcopy=False)
              if t.state == TrialState.COMPLETE and t.value is not None and not math.isnan(t.value)]
    return max(values) if values else None
