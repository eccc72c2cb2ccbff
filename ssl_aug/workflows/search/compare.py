"""The best policy vs the base recipe at equal budget on the TEST split, over seeds, with the floors (raw
pixels with the per-image mean removed, a randomly initialised encoder) measured on the same split.

Runs are ordinary experiments (run_experiment: the recipe's whole training set, kNN on the test split) in
compare/{base,best}/seed{S}; finished ones (eval.json present) are reused. Writes compare.md."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from ssl_aug.config import config_from_dict, set_dotted
from ssl_aug.io import atomic_write_text
from ssl_aug.workflows.search.space import apply_point

__all__ = ["compare_best", "compare_recipes", "floors", "mean_std"]


def mean_std(values: list[float]) -> tuple[float, float]:
    m = sum(values) / len(values)
    s = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return m, s


def floors(cfg, seed: int = 0) -> dict:
    """kNN top-1 on the test split of raw pixels (per-image mean removed) and of a random encoder."""
    from ssl_aug.augment.recipe import normalization
    from ssl_aug.evaluation.features import extract_features
    from ssl_aug.evaluation.knn import knn_evaluate
    from ssl_aug.train import build_model, load_training_data

    train, test = (load_training_data(cfg, split=s).decoded() for s in ("train", cfg.eval.test_split))
    c = len(train.classes)
    k, t = min(cfg.eval.knn_k, len(train.labels)), cfg.eval.knn_temperature

    def pixels(x):
        f = x.float().flatten(1) / 255.0
        return torch.nn.functional.normalize(f - f.mean(1, keepdim=True), dim=1)

    out = {"raw pixels": knn_evaluate(pixels(train.images), train.labels, pixels(test.images), test.labels,
                                      ks=(k,), temperature=t, num_classes=c)["top1"]}
    torch.manual_seed(seed)
    backbone = build_model(cfg).backbone.eval()
    mean, std = normalization(cfg)
    feats = [extract_features(backbone, d.images, mean, std, progress=False) for d in (train, test)]
    out["random encoder"] = knn_evaluate(feats[0], train.labels, feats[1], test.labels, ks=(k,), temperature=t,
                                         num_classes=c)["top1"]
    return out


def compare_best(spec, best, search_dir: Path, seeds: int, progress: bool = False) -> tuple[str, list[Path]]:
    """Train the base recipe and the best trial's policy for `seeds` seeds each (the trials' budget, on the
    recipe's whole training set) and compare kNN top-1 on the test split; -> (Markdown, files written)."""
    from ssl_aug.workflows.search.space import base_point

    base = base_point(spec.base, spec.params) or {}
    same = set(base) == set(best.params) and all(  # the base recipe won: nothing else to train
        abs(v - base[k]) < 1e-9 if isinstance(v, float) and isinstance(base[k], float) else v == base[k]
        for k, v in best.params.items())
    return compare_recipes(spec, apply_point(spec.base, spec.params, best.params), f"Best policy (trial {best.number})",
                           search_dir, seeds, same=same, summary={"best_trial": best.number}, progress=progress)


def compare_recipes(spec, policy: dict, title: str, search_dir: Path, seeds: int, same: bool = False,
                    summary: dict | None = None, held_out: bool = True,
                    progress: bool = False) -> tuple[str, list[Path]]:
    """Train the base recipe and the recipe `policy` (the best policy of any search strategy) for `seeds`
    seeds each and compare kNN top-1 on the test split; same = the policy is the base recipe (trained once);
    held_out = the search scored on a validation split (now trained on, which the text says)."""
    from ssl_aug.workflows.experiment import run_experiment

    recipes = {"base recipe": spec.base, "best policy": policy}
    results: dict[str, list[float]] = {}
    for name, recipe in recipes.items():
        results[name] = []
        if same and name == "best policy":
            results[name] = list(results["base recipe"])
            continue
        for s in range(seeds):
            run_dir = search_dir / "compare" / name.split()[0] / f"seed{s}"
            data = json.loads(json.dumps(recipe))
            set_dotted(data, "seed", int(spec.base.get("seed", 0)) + s)
            set_dotted(data, "output_dir", str(run_dir))
            set_dotted(data, "eval.knn_every", 0)
            done = run_dir / "eval.json"
            if done.is_file():
                res = json.loads(done.read_text())
            else:
                print(f"compare: {name} seed {s} -> {run_dir}", flush=True)
                res = run_experiment(config_from_dict(data), run_dir, resume=True, progress=progress)
            results[name].append(float(res["knn_top1"]))
    cfg = config_from_dict(spec.base)
    floor = floors(cfg, seed=spec.raw["seed"])
    epochs = cfg.train.epochs
    held = " (validation images included)" if held_out else ""
    lines = [f"{title} vs the base recipe on the **test** split: kNN top-1 (k = "
             f"{cfg.eval.knn_k}, T = {cfg.eval.knn_temperature}), {epochs} epochs each on the recipe's whole "
             f"training set{held}, {seeds} seed(s), mean ± std:", "",
             "| encoder | kNN top-1 (test) | per seed |", "|---|---|---|"]
    for name, values in results.items():
        m, s = mean_std(values)
        lines.append(f"| {name} | {m:.4f} ± {s:.4f} | {', '.join(f'{v:.4f}' for v in values)} |")
    for name, value in floor.items():
        lines.append(f"| floor: {name} | {value:.4f} | – |")
    (bm, bs), (dm, ds) = mean_std(results["best policy"]), mean_std(results["base recipe"])
    verdict = ("at least as good as" if bm >= dm else "within one std of" if bm + max(bs, ds) >= dm else "worse than")
    lines += ["", "The best trial is the base recipe itself: no policy in the space beat it on the validation split."
              if same else f"The best policy is {verdict} the base recipe on the test split ({bm - dm:+.4f})."]
    text = "\n".join(lines) + "\n"
    summary = {**(summary or {}), "seeds": seeds, "results": results, "floors": floor}
    files = [atomic_write_text(search_dir / "compare.md", text),
             atomic_write_text(search_dir / "compare.json", json.dumps(summary, indent=2) + "\n")]
    return text, files
