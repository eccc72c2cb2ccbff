"""BYOL beside SimCLR at equal steps: the quickstart recipe on the embedded set, and the CIFAR-10 CPU
recipes (simclr_cifar10_cpu vs byol_cifar10_cpu, same backbone, subset and optimiser; both at SimCLR's
epochs unless --epochs says otherwise).

    python eval/byol_vs_simclr.py embedded --seeds 0        # ~2 x 1 CPU-minute
    SSL_AUG_DATA=... python eval/byol_vs_simclr.py cifar --seeds 0   # ~2 x 5 CPU-minutes (AVX-512)

BYOL on the embedded set uses the quickstart's backbone, heads and schedule with the byol_asymmetric views
without blur (blur erases the 20 px structure that is the class). Runs go to runs/byol_vs_simclr/; finished
runs are reused. Prints one JSON line per run and a Markdown table.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
from pathlib import Path

from ssl_aug.config import config_from_dict, read_toml, resolve_recipe_path
from ssl_aug.workflows.experiment import run_experiment


def recipes(data: str) -> dict[str, dict]:
    if data == "cifar":
        return {m: read_toml(resolve_recipe_path(f"{m}_cifar10_cpu")) for m in ("simclr", "byol")}
    quick = read_toml(resolve_recipe_path("quickstart"))
    byol = copy.deepcopy(quick)
    hidden, dim = quick["method"]["proj_hidden_dim"], quick["method"]["proj_dim"]
    byol["method"] = {"name": "byol", "proj_hidden_dim": hidden, "proj_dim": dim, "pred_hidden_dim": hidden,
                      "base_momentum": 0.99}
    byol["augment"].pop("views", None)
    byol["augment"].update(preset="byol_asymmetric", blur={"p": 0.0})
    return {"simclr": quick, "byol": byol}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", choices=("embedded", "cifar"))
    parser.add_argument("--seeds", default="0", help="comma-separated seeds")
    parser.add_argument("--epochs", type=int, default=0, help="epochs of both runs (0 = the SimCLR recipe's)")
    parser.add_argument("--out", default="runs/byol_vs_simclr")
    args = parser.parse_args(argv)
    scores: dict[str, list[float]] = {}
    pair = recipes(args.data)
    epochs = args.epochs or pair["simclr"]["train"]["epochs"]
    for seed in (int(s) for s in args.seeds.split(",")):
        for method, recipe in pair.items():
            recipe = dict(copy.deepcopy(recipe), seed=seed, device="cpu")
            recipe["train"]["epochs"] = epochs
            run = Path(args.out) / args.data / f"{method}_e{recipe['train']['epochs']}_s{seed}"
            done = run / "eval.json"
            result = json.loads(done.read_text()) if done.exists() else run_experiment(
                config_from_dict(recipe), run, progress=False)
            scores.setdefault(method, []).append(result["knn_top1"])
            print(json.dumps({"data": args.data, "method": method, "seed": seed, "steps": result["steps"],
                              "knn_top1": result["knn_top1"]}), flush=True)
    print("\n| method | kNN top-1 (mean ± std over seeds) | seeds |\n|---|---|---|")
    for method, values in scores.items():
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"| {method} | {statistics.mean(values):.3f} ± {std:.3f} | {len(values)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
