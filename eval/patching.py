"""Issue-14 experiments, one command each (trains the encoders of the shipped ablation spec first, reusing
finished runs, then evaluates and prints a Markdown table, also written to runs/<spec>/results_patching.md):

    python eval/patching.py spurious        # (i)  ERM vs group-DRO/CLAMP probe vs subgroup-changing views
    python eval/patching.py gating          # (ii) real only vs real + all candidates vs real + gated
    python eval/patching.py randomization   # (iii) randomization width vs shifted-domain accuracy

Numbers are mean ± std over the spec's seeds (sample std); floors (raw pixels with the per-image mean
removed, a randomly initialised encoder of the same architecture) are evaluated beside them.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import numpy as np
import torch

from ssl_aug.workflows.ablation import execute, load_spec, plan_runs, stale_reason
from ssl_aug.augment.recipe import normalization
from ssl_aug.config import config_from_dict
from ssl_aug.data.embedded import SHIFTED_DOMAIN, load_embedded
from ssl_aug.evaluation import extract_features, knn_evaluate, linear_probe
from ssl_aug.evaluation.groups import gap_ratio
from ssl_aug.evaluation.patching import patched_finetune, patched_probe
from ssl_aug.export import encoder_from_checkpoint
from ssl_aug.workflows.gate import gate
from ssl_aug.io import atomic_write_text
from ssl_aug.models import build_backbone

PROBE = dict(epochs=300, lr=0.01, weight_decay=1e-3, eta=0.1)
FINETUNE = dict(epochs=10, batch_size=128, lr=1e-3, eta=0.1)
FINETUNED = {"full_recipe": (("erm", 0.0), ("clamp", 1.0))}  # cell -> (objective, consistency weight)
TEST_PER_CLASS = 1000  # spurious test split: 100 images per (class, colour) cell, so cell accuracies are not noise


def _shortcut(r: dict, classes, group_names) -> float:
    """Accuracy on images whose patch has their class's own colour minus on all others (the shortcut's gap)."""
    aligned = [r["cells"][f"{c}/{group_names[i]}"] for i, c in enumerate(classes)]
    others = [v for k, v in r["cells"].items() if k not in {f"{c}/{group_names[i]}" for i, c in enumerate(classes)}]
    mean = lambda cells: sum(v["acc"] * v["n"] for v in cells) / sum(v["n"] for v in cells)  # noqa: E731
    return mean(aligned) - mean(others)


REUSE = {"stale": False}  # --reuse-stale: evaluate finished runs even if recipe defaults changed since


def _runs(spec_name: str):
    spec, path = load_spec(spec_name)
    runs = plan_runs(spec, path)
    if REUSE["stale"]:
        for run in runs:
            reason = stale_reason(run)
            if reason and (run.run_dir / "eval.json").is_file():
                print(f"reusing {run.run_dir} although {reason}")
        runs_to_train = [r for r in runs if not (r.run_dir / "eval.json").is_file()]
    else:
        runs_to_train = runs
    execute(runs_to_train, progress=False)
    failed = [r for r in runs if r.error]
    if failed:
        sys.exit(f"training failed: {failed[0].cell} seed {failed[0].seed}: {failed[0].error}")
    return runs, Path(spec.get("output_dir"))


def _encoder(run):
    backbone, config = encoder_from_checkpoint(run.run_dir)
    mean, std = normalization(config_from_dict(config))
    return backbone.eval(), mean, std


def _random_encoder(run, seed: int):
    torch.manual_seed(seed)
    backbone = build_backbone(run.config.model.backbone, **run.config.model.backbone_args).eval()
    return backbone, *normalization(run.config)


def _raw(images):
    x = images.float().flatten(1) / 255
    return x - x.mean(1, keepdim=True)


def _feats(enc, images):
    backbone, mean, std = enc
    return extract_features(backbone, images, mean, std, progress=False)


def _ms(values) -> str:
    v = np.asarray(values, dtype=float) * 100
    return f"{v.mean():.1f}" + (f" ± {v.std(ddof=1):.1f}" if len(v) > 1 else "")


def _table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


def spurious() -> str:
    runs, out = _runs("patch_spurious")
    res: dict[str, list[dict]] = {}
    for run in runs:
        opts = dict(run.config.data.options)
        tr, te = load_embedded("train", **opts), load_embedded("test", **{**opts, "n_per_class": TEST_PER_CLASS})
        kw = dict(classes=tr.classes, group_names=tr.group_names, seed=run.seed, **PROBE)
        sets = {}
        if run.cell == runs[0].cell:  # floors once per seed
            sets = {"raw pixels": (_raw(tr.images), _raw(te.images)),
                    "random encoder": tuple(_feats(_random_encoder(run, run.seed), d.images) for d in (tr, te))}
        sets[run.cell] = tuple(_feats(_encoder(run), d.images) for d in (tr, te))
        objectives = {"no_color_invariance": ("erm", "group_dro", "clamp"), "subgroup_views": ("erm", "clamp"),
                      "full_recipe": ("erm", "clamp"), "full_recipe_subgroup_views": ("erm", "clamp")}
        for name, (ftr, fte) in sets.items():
            for obj in objectives.get(name, ("erm",)):
                r = patched_probe(ftr, tr.labels, tr.groups, fte, te.labels, te.groups, objective=obj, **kw)
                r["shortcut"] = _shortcut(r, tr.classes, tr.group_names)
                res.setdefault(f"{name} + {obj} probe", []).append(r)
        for obj, weight in FINETUNED.get(run.cell, ()):
            backbone, mean, std = _encoder(run)
            r = patched_finetune(copy.deepcopy(backbone), mean, std, (tr.images, tr.labels, tr.groups),
                                 (te.images, te.labels, te.groups), objective=obj, consistency=weight,
                                 classes=tr.classes, group_names=tr.group_names, seed=run.seed, **FINETUNE)
            r["shortcut"] = _shortcut(r, tr.classes, tr.group_names)
            extra = f" + consistency {weight:g}" if weight else ""
            res.setdefault(f"{run.cell} fine-tuned, {obj}{extra}", []).append(r)
    ref = res["no_color_invariance + erm probe"]
    rows = []
    for name, rs in res.items():
        ratios = [gap_ratio(a["mean_gap"], b["mean_gap"]) for a, b in zip(ref, rs)]
        rows.append((name, _ms([r["average"] for r in rs]), _ms([r["worst_group_acc"] for r in rs]),
                     _ms([r["mean_gap"] for r in rs]), f"{np.mean(ratios):.2f}×", _ms([r["shortcut"] for r in rs])))
    text = _table(["encoder + probe", "average %", "worst group %", "mean class gap %",
                   "gap ratio (ERM gap / gap)", "aligned − other colours %"], rows)
    text += (f"\n\nTest split: {TEST_PER_CLASS} images per class, every patch colour 100 times per class. Worst "
             "group = the worst of the 100 (class, colour) cells; class gap = best minus worst cell within a class, "
             "averaged over classes; gap ratio against the no_color_invariance + ERM row of the same seed; last "
             "column = accuracy on images whose patch has their class's training colour minus on the others. "
             f"Fine-tuned rows: encoder + linear head, AdamW, {FINETUNE}, consistency = Jensen-Shannon between "
             "the predictions for an image and for its patch recoloured to a random palette colour.")
    return _finish(out, "spurious", runs, text)


def randomization() -> str:
    runs, out = _runs("patch_randomization")
    res: dict[tuple, list[float]] = {}
    for run in runs:
        opts = dict(run.config.data.options)
        plain = {k: v for k, v in opts.items() if k != "shift"}
        tr, te_in, te_shift = load_embedded("train", **plain), load_embedded("test", **plain), load_embedded("test", **opts)
        for enc_name, enc in (("SSL", _encoder(run)), ("random encoder", _random_encoder(run, run.seed))):
            ftr, fin, fsh = (_feats(enc, d.images) for d in (tr, te_in, te_shift))
            res.setdefault((run.cell, enc_name, "kNN in-domain"), []).append(
                knn_evaluate(ftr, tr.labels, fin, te_in.labels, ks=(200,), temperature=0.1)["top1"])
            res.setdefault((run.cell, enc_name, "kNN shifted"), []).append(
                knn_evaluate(ftr, tr.labels, fsh, te_shift.labels, ks=(200,), temperature=0.1)["top1"])
            if enc_name == "SSL":
                res.setdefault((run.cell, enc_name, "linear shifted"), []).append(
                    linear_probe(ftr, tr.labels, fsh, te_shift.labels, seed=run.seed)["top1"])
        raw = knn_evaluate(_raw(tr.images), tr.labels, _raw(te_shift.images), te_shift.labels, ks=(200,))["top1"]
        res.setdefault((run.cell, "raw pixels", "kNN shifted"), []).append(raw)
    rows = []
    for cell in sorted(dict.fromkeys(r.cell for r in runs)):
        g = lambda e, m: _ms(res[(cell, e, m)])  # noqa: E731
        rows.append((cell, g("SSL", "kNN in-domain"), g("SSL", "kNN shifted"), g("SSL", "linear shifted"),
                     g("raw pixels", "kNN shifted"), g("random encoder", "kNN shifted")))
    text = _table(["randomization width", "SSL kNN in-domain %", "SSL kNN shifted %", "SSL linear shifted %",
                   "raw pixels kNN shifted %", "random encoder kNN shifted %"], rows)
    text += f"\n\nShifted test domain: {SHIFTED_DOMAIN}."
    return _finish(out, "randomization", runs, text)


def _candidates(seed: int):
    """1000 candidates: 600 correct, 250 mislabelled (another class), 150 off-distribution noise images
    with random labels -> (images, labels, is_good)."""
    good = load_embedded("train", seed=100 + seed, n_per_class=60, cache=False)
    bad = load_embedded("train", seed=200 + seed, n_per_class=25, cache=False)
    g = torch.Generator().manual_seed(seed)
    wrong = (bad.labels + torch.randint(1, 10, bad.labels.shape, generator=g)) % 10
    noise = torch.randint(0, 256, (150, 3, 20, 20), generator=g).to(torch.uint8)
    x = torch.cat([good.images, bad.images, noise])
    y = torch.cat([good.labels, wrong, torch.randint(0, 10, (150,), generator=g)])
    ok = torch.cat([torch.ones(600, dtype=torch.bool), torch.zeros(400, dtype=torch.bool)])
    return x, y, ok


def gating(min_confidence: float = 0.5) -> str:
    runs, _ = _runs("patch_randomization")
    runs = [r for r in runs if r.cell == "width=1"]
    out = Path("runs/patch_gating")
    real_all, test = load_embedded("train", n_per_class=200), load_embedded("test", n_per_class=200)
    res: dict[tuple, list[float]] = {}
    for run in runs:
        idx = torch.cat([torch.nonzero(real_all.labels == c).squeeze(1)[:20] for c in range(10)])
        real = real_all.subset(idx)
        cx, cy, ok = _candidates(run.seed)
        enc = _encoder(run)
        rep = gate(enc[0], enc[1], enc[2], real, (cx, cy), min_confidence, out / f"seed{run.seed}", seed=run.seed)
        keep = torch.tensor(rep["kept_mask"])
        res.setdefault(("gate", "precision"), []).append(float((keep & ok).sum() / keep.sum().clamp_min(1)))
        res.setdefault(("gate", "recall"), []).append(float((keep & ok).sum() / ok.sum()))
        sets = {"real only": (real.images, real.labels), "real + all candidates": (torch.cat([real.images, cx]),
                torch.cat([real.labels, cy])), "real + gated": (torch.cat([real.images, cx[keep]]),
                torch.cat([real.labels, cy[keep]]))}
        fte = _feats(enc, test.images)
        for name, (x, y) in sets.items():
            res.setdefault((name, "n"), []).append(len(y))
            f = _feats(enc, x)
            res.setdefault((name, "linear"), []).append(linear_probe(f, y, fte, test.labels, seed=run.seed)["top1"])
            res.setdefault((name, "kNN"), []).append(
                knn_evaluate(f, y, fte, test.labels, ks=(20,), temperature=0.1)["top1"])
        res.setdefault(("floor", "raw"), []).append(knn_evaluate(_raw(real.images), real.labels, _raw(test.images),
                                                               test.labels, ks=(20,))["top1"])
    rows = [(n, f"{np.mean(res[(n, 'n')]):.0f}", _ms(res[(n, "linear")]), _ms(res[(n, "kNN")]))
            for n in ("real only", "real + all candidates", "real + gated")]
    rows.append(("floor: raw pixels, real only", "", "-", _ms(res[("floor", "raw")])))
    text = _table(["training labels", "images (mean)", "linear probe top-1 %", "kNN (k=20) top-1 %"], rows)
    text += (f"\n\nCandidates: 1000 = 600 correct + 250 mislabelled + 150 off-distribution noise images; gate "
             f"C = {min_confidence}: precision (share of kept that are "
             f"correct) {_ms(res[('gate', 'precision')])} %, recall of the correct {_ms(res[('gate', 'recall')])} %.")
    return _finish(out, "gating", runs, text)


def _finish(out: Path, name: str, runs, text: str) -> str:
    seeds = sorted({r.seed for r in runs})
    text = f"### {name} (seeds {seeds}, mean ± std)\n\n" + text + "\n"
    atomic_write_text(out / f"results_{name}.md", text)
    print(text)
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("experiment", choices=("spurious", "gating", "randomization"))
    ap.add_argument("--reuse-stale", action="store_true", help="evaluate finished encoder runs whose recorded "
                    "config differs from the spec's current resolution (e.g. a changed default); else they are refused")
    args = ap.parse_args(argv)
    REUSE["stale"] = args.reuse_stale
    {"spurious": spurious, "gating": gating, "randomization": randomization}[args.experiment]()
    return 0


if __name__ == "__main__":
    sys.exit(main())
