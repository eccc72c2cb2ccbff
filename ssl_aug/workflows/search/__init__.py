"""Augmentation policy search: a base recipe + a search space over view parameters -> Optuna trials (TPE,
successive halving / Hyperband on the per-epoch validation score), each an ordinary run directory ->
the best policy as a recipe, a trial table, rank correlations of label-free scores, plots, and the best
policy vs the base recipe on the test split. Strategy "tanda" (spec key `strategy`) instead learns a TF
sequence adversarially (`tanda`, `tanda_search`) and compares it the same way.

- `spec`: the search TOML; `space`: parameters; `objectives`: knn_val and label-free scores;
- `study`: the Optuna study and its workers; `report`, `plots`, `compare`: the outputs.
Workers run here (`--workers N`) or on Ray (`ssl_aug.workflows.launchers`). Needs the `search` extra (Optuna).
"""

from __future__ import annotations

from pathlib import Path

from ssl_aug.workflows.search.spec import SearchSpec, load_search

__all__ = ["run_search", "write_search_report", "load_search", "SearchSpec"]


def write_search_report(spec: SearchSpec, search_dir: Path, compare_seeds: int = 0, progress: bool = False) -> tuple[str, list[Path]]:
    """Trial table, best recipe, correlations, plots and (compare_seeds > 0) the test comparison."""
    from ssl_aug.io import atomic_write_text
    from ssl_aug.workflows.search.plots import plot_search
    from ssl_aug.workflows.search.report import (best_trial, correlations, first_rung_rows, rho_text, trial_rows,
                                       write_best_recipe, write_trials)
    from ssl_aug.workflows.search.study import open_study

    study = open_study(spec, search_dir)
    rows = trial_rows(study)
    table, files = write_trials(rows, spec.params, search_dir, spec.raw["objective"])
    states = {s: sum(r["state"] == s for r in rows) for s in ("complete", "pruned", "fail")}
    cfg = spec.base
    lines = [f"## Search: {spec.raw.get('description') or spec.path.stem}", "",
             f"Base recipe: `{spec.raw['base'] if isinstance(spec.raw['base'], str) else '(inline)'}`; objective "
             f"`{spec.raw['objective']}` on {spec.raw['validation']} training images held out (seed "
             f"{spec.raw['seed']}); budget per trial {cfg.get('train', {}).get('epochs', '?')} epochs; pruner "
             f"{spec.raw['pruner']['name']}; trials: {states['complete']} complete, {states['pruned']} pruned, "
             f"{states['fail']} failed.", ""]
    best = best_trial(study)
    if best is not None:
        files.append(write_best_recipe(spec, best, search_dir))
        lines += [f"Best: trial {best.number}, {spec.raw['objective']} = {best.value:.4f}; policy: "
                  + ", ".join(f"`{k}={v if not isinstance(v, float) else round(v, 4)}`" for k, v in best.params.items()), ""]
    corr, rung = correlations(rows), correlations(first_rung_rows(rows, search_dir))
    if any(n for _, n in corr.values()):
        lines += ["Spearman rank correlation of each label-free score with knn_val (higher = the score ranks "
                  "policies as the labels do), over the complete trials at the full budget and over every trial "
                  "after epoch 1 (rotation is scored only at the end):", "",
                  "| label-free score | ρ, complete trials | trials | ρ, all trials at epoch 1 | trials |",
                  "|---|---|---|---|---|"]
        lines += [f"| {name} | {rho_text(rho, n)} | {n} | {rho_text(*rung[name], 'trials')} | {rung[name][1]} |"
                  for name, (rho, n) in corr.items()]
        lines.append("")
    lines += ["Trials (best first):", "", table]
    plots, note = plot_search(rows, study, spec, search_dir)
    files += plots
    if note:
        lines.append(note)
    if compare_seeds and best is not None:
        from ssl_aug.workflows.search.compare import compare_best

        text, written = compare_best(spec, best, search_dir, compare_seeds, progress=progress)
        lines += ["", text]
        files += written
    report = "\n".join(lines) + "\n"
    files.append(atomic_write_text(search_dir / "report.md", report))
    return report, files


def run_search(spec: str | Path, overrides: list[str] = (), launcher: str = "local", workers: int = 1,
               address: str | None = None, gpus_per_worker: float = 0.0, progress: bool = True,
               report_only: bool = False) -> Path:
    """Validate, create or resume the search directory, run the workers, write the report."""
    from ssl_aug.errors import SslAugError
    from ssl_aug.workflows.launchers import LAUNCHERS, check_ray_address, launch, require_ray, threads_per_worker
    from ssl_aug.workflows.search.study import SPEC_FILE, prepare_search, require_optuna, run_worker

    require_optuna()
    if launcher not in LAUNCHERS or not isinstance(workers, int) or workers < 1:
        launch(run_worker, [], launcher=launcher, workers=workers)  # raises the one-line error
    if address and launcher != "ray":
        raise SslAugError(f"--address {address} needs --launcher ray (the local launcher runs on this machine)")
    if launcher == "ray":
        require_ray()
        if address:
            check_ray_address(address)  # before anything is written
    loaded = load_search(spec, overrides)
    if loaded.raw.get("strategy") == "tanda":  # one seeded learner on this machine, no trials
        from ssl_aug.workflows.search.tanda_search import run_tanda_search

        if launcher != "local" or workers != 1:
            raise SslAugError("search strategy 'tanda' runs one learner on this machine; "
                              "use --launcher local --workers 1")
        report, files = run_tanda_search(loaded, loaded.raw["compare_seeds"], progress=progress,
                                         report_only=report_only)
        print("\n" + report)
        print("wrote " + ", ".join(str(p) for p in files))
        return loaded.out_dir
    if report_only and not (loaded.out_dir / SPEC_FILE).is_file():
        raise SslAugError(f"no search in {loaded.out_dir} to report on; run it first (without --report-only)")
    from ssl_aug.train.signals import PhaseInterrupted, TrainingInterrupted, interrupt_on_signal, workflow_stop_line

    with workflow_stop_line("search"):
        try:
            with interrupt_on_signal():  # the trainer's own guard takes over while a trial trains
                if not report_only:
                    search_dir = prepare_search(loaded)
                    threads = threads_per_worker(workers) if launcher == "local" else 0
                    tasks = [(str(search_dir.resolve()), i, threads, progress and workers == 1) for i in range(workers)]
                    launch(run_worker, tasks, launcher=launcher, workers=workers, address=address,
                           gpus_per_task=gpus_per_worker)
                else:
                    search_dir = loaded.out_dir
                report, files = write_search_report(loaded, search_dir, loaded.raw["compare_seeds"], progress=progress)
        except (TrainingInterrupted, PhaseInterrupted) as stop:
            stopped(stop, loaded)
    print("\n" + report)
    print("wrote " + ", ".join(str(p) for p in files))
    return search_dir


def stopped(stop, spec) -> None:
    """After SIGTERM / SIGINT: one line naming the stopped trial, the finished trials and how to continue;
    then exit with the signal's status (143 / 130)."""
    from ssl_aug.train.signals import end_workflow

    finished = "?"
    if (spec.out_dir / "study.db").is_file():
        from ssl_aug.workflows.search.study import finished_trials, open_study

        finished = len(finished_trials(open_study(spec, spec.out_dir)))
    trial = getattr(stop, "trial", None)
    where = f"in trial {trial} (recorded as interrupted, not as a result; it runs again from its last checkpoint)" \
        if trial is not None else "between trials"
    end_workflow(stop.signum, f"search stopped {where}; {finished} of {spec.raw['trials']} trials finished; "
                              "continue with the same command")
