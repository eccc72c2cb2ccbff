"""Corruption robustness (Hendrycks & Dietterich 2019): kNN and linear-probe accuracy of a frozen encoder
on the test images under each corruption and severity (ssl_aug.augment.corruptions, generated batched on
the encoder's device), the drop from clean accuracy, and the corruption error relative to a baseline.

Corruption error (the paper's definition, errors E = 1 - top-1): CE_c = sum_s E(c, s) / sum_s E_base(c, s),
mCE = mean over corruptions of CE_c (x 100 in tables; 100 = as bad as the baseline, lower is better). The
baseline here is the randomly initialised encoder of the same backbone, read with the same kNN / linear
probe on the same corrupted images (ImageNet-C normalises by AlexNet; a random encoder is the baseline every
run of every backbone has). Without a baseline, mCE is left out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn

from ssl_aug.augment.corruptions import COMMON, FAMILIES, SEVERITIES, check_corruption, check_severity, corrupt
from ssl_aug.data.image_store import pixels
from ssl_aug.errors import SslAugError
from ssl_aug.evaluation.base import Evaluator, EvaluatorConfig, pct, register_evaluator
from ssl_aug.evaluation.features import extract_features, module_device
from ssl_aug.evaluation.knn import knn_evaluate
from ssl_aug.evaluation.linear import linear_probe

__all__ = ["corrupted_features", "robustness_eval", "robustness_table", "corruption_seed", "random_init_like",
           "RobustnessEvaluator"]


def corruption_seed(seed: int, name: str, severity: int) -> int:
    """The seed of one (corruption, severity) set: a model and its baseline see the same corrupted images."""
    return int(seed) * 1000 + list(COMMON + ("saturate",)).index(name) * 10 + int(severity)


def corrupted_features(encoder: nn.Module, images: torch.Tensor, mean, std, name: str, severity: int, seed: int = 0,
                       batch_size: int = 512, amp: bool = False) -> torch.Tensor:
    """Features (N, D) of `images` uint8 (N, 3, H, W) corrupted by (name, severity) on the encoder's device,
    batch_size images at a time (each batch its own generator seeded from seed and the batch index)."""
    device = module_device(encoder)
    out = []
    base = corruption_seed(seed, name, severity)
    for i in range(0, images.shape[0], batch_size):
        x = corrupt(images[i:i + batch_size].to(device), name, severity, seed=base * 100003 + i)
        out.append(extract_features(encoder, x, mean, std, batch_size=batch_size, amp=amp, progress=False))
    return torch.cat(out)


def _accuracies(encoder, mean, std, train, test, corruptions, severities, k, temperature, linear, num_classes,
                batch_size, seed, amp, progress, features=None) -> dict:
    from tqdm.auto import tqdm

    (tr_x, tr_y), (te_x, te_y) = train, test
    c = int(num_classes or max(int(tr_y.max()), int(te_y.max())) + 1)
    tr_f, te_f = features or [extract_features(encoder, x, mean, std, batch_size=batch_size, amp=amp, progress=False)
                              for x in (tr_x, te_x)]
    k = min(k, len(tr_y))

    def knn_top1(f):
        return knn_evaluate(tr_f, tr_y, f, te_y, ks=(k,), temperature=temperature, num_classes=c)["top1"]

    clean = {"knn": knn_top1(te_f)}
    classifier = None
    if linear:
        probe = linear_probe(tr_f, tr_y, te_f, te_y, num_classes=c, seed=seed)
        classifier, clean["linear"] = probe["classifier"], probe["top1"]
    table = {}
    jobs = [(n, s) for n in corruptions for s in severities]
    for name, sev in tqdm(jobs, desc="corruptions", disable=not progress, leave=False):
        f = corrupted_features(encoder, te_x, mean, std, name, sev, seed, batch_size, amp)
        entry = table.setdefault(name, {"knn": [], **({"linear": []} if linear else {})})
        entry["knn"].append(knn_top1(f))
        if classifier is not None:
            with torch.no_grad():
                entry["linear"].append(float((classifier(f).argmax(1) == te_y).double().mean()))
    return {"clean": clean, "by_corruption": table, "k": k, "temperature": float(temperature)}


def robustness_eval(encoder: nn.Module, mean, std, train, test, corruptions: Sequence[str] | None = None,
                    severities: Sequence[int] = SEVERITIES, k: int = 200, temperature: float = 0.1,
                    linear: bool = True, baseline: nn.Module | None = None, baseline_name: str = "random encoder",
                    num_classes: int | None = None, batch_size: int = 512, seed: int = 0, amp: bool = False,
                    progress: bool = False, features=None) -> dict:
    """train/test: (uint8 images (N, 3, H, W), labels (N,)). Returns a JSON-friendly dict:
    {"clean": {"knn", "linear"}, "by_corruption": {name: {"knn": [top-1 per severity], "linear": [...]}},
    "mean": {probe: mean corrupted top-1}, "drop": {probe: clean - mean}, "family": {family: {probe: mean}},
    "severities", "k", "temperature", "num_test", and with a baseline "ce": {name: {probe: CE}}, "mce":
    {probe: mCE}, "baseline": {same keys as clean / by_corruption}, "baseline_name"}. features: the encoder's
    precomputed clean (train, test) features (L2-normalised), if at hand."""
    corruptions = list(COMMON if corruptions is None else corruptions)
    for name in corruptions:
        check_corruption(name)
    severities = [check_severity(s) for s in severities]
    kw = dict(corruptions=corruptions, severities=severities, k=k, temperature=temperature, linear=linear,
              num_classes=num_classes, batch_size=batch_size, seed=seed, amp=amp, progress=progress)
    out = _accuracies(encoder, mean, std, train, test, features=features, **kw)
    probes = list(out["clean"])
    table = out["by_corruption"]
    out["mean"] = {p: sum(sum(table[n][p]) for n in table) / sum(len(table[n][p]) for n in table) for p in probes}
    out["drop"] = {p: out["clean"][p] - out["mean"][p] for p in probes}
    out["family"] = {fam: {p: sum(sum(table[n][p]) / len(table[n][p]) for n in names if n in table)
                           / max(1, sum(n in table for n in names)) for p in probes}
                     for fam, names in {**FAMILIES, "extra": ("saturate",)}.items() if any(n in table for n in names)}
    out.update(severities=severities, num_test=int(test[1].shape[0]))
    if baseline is not None:
        base = _accuracies(baseline, mean, std, train, test, **kw)
        out["baseline"] = {"clean": base["clean"], "by_corruption": base["by_corruption"]}
        out["baseline_name"] = baseline_name
        out["ce"] = {n: {p: sum(1 - a for a in table[n][p]) / max(1e-12, sum(1 - a for a in base["by_corruption"][n][p]))
                         for p in probes} for n in table}
        out["mce"] = {p: sum(out["ce"][n][p] for n in table) / len(table) for p in probes}
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def robustness_table(result: dict) -> str:
    """Markdown: one row per corruption (top-1 % per severity, mean, CE) per probe, then a summary line."""
    probes = list(result["clean"])
    sev = result["severities"]
    has_ce = "ce" in result
    lines = []
    for p in probes:
        head = f"| {p} top-1 % | " + " | ".join(f"s{s}" for s in sev) + " | mean |" + (" CE |" if has_ce else "")
        lines += [head, "|---|" + "---|" * (len(sev) + 1 + has_ce)]
        lines.append(f"| clean | " + " | ".join(_pct(result["clean"][p]) for _ in sev) + f" | {_pct(result['clean'][p])} |"
                     + (" |" if has_ce else ""))
        for name, entry in result["by_corruption"].items():
            acc = entry[p]
            row = f"| {name} | " + " | ".join(_pct(a) for a in acc) + f" | {_pct(sum(acc) / len(acc))} |"
            lines.append(row + (f" {100 * result['ce'][name][p]:.1f} |" if has_ce else ""))
        lines.append("")
    summary = []
    for p in probes:
        s = (f"{p}: clean {_pct(result['clean'][p])}%, corrupted mean {_pct(result['mean'][p])}% "
             f"(drop {_pct(result['drop'][p])} points)")
        if has_ce:
            s += f", mCE {100 * result['mce'][p]:.1f} (baseline: {result['baseline_name']} = 100)"
        summary.append(s)
    return "\n".join(lines) + "\n" + "; ".join(summary) + "."


def test_rows(labels: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """Rows of the queries an evaluator uses: all (n = 0 or n >= len) or a seeded class-balanced subset of n."""
    from ssl_aug.data import balanced_subset

    labels = torch.as_tensor(labels)
    return torch.arange(len(labels)) if not n or n >= len(labels) else balanced_subset(labels, n, seed)


def random_init_like(encoder: nn.Module, seed: int = 0) -> nn.Module:
    """A copy of `encoder` with every layer re-initialised by its own reset_parameters (seeded): the randomly
    initialised encoder of the same architecture, on the same device, in eval mode."""
    import copy

    torch.manual_seed(seed)
    clone = copy.deepcopy(encoder)
    for m in clone.modules():
        if hasattr(m, "reset_parameters") and callable(m.reset_parameters):
            m.reset_parameters()
        if hasattr(m, "reset_running_stats") and callable(m.reset_running_stats):
            m.reset_running_stats()
    return clone.eval()


@register_evaluator("robustness")
class RobustnessEvaluator(Evaluator):
    """Corruption robustness: kNN and linear top-1 under 15 corruptions x 5 severities, drop from clean, mCE
    relative to the random-init encoder of the same architecture (baseline = "none" leaves mCE out)."""

    @dataclass
    class Config(EvaluatorConfig):
        corruptions: list = field(default_factory=lambda: list(COMMON))
        severities: list = field(default_factory=lambda: list(SEVERITIES))
        linear: bool = True
        baseline: str = "random"  # "random": random-init encoder of the same backbone; "none": no mCE
        images: int = 0           # test images corrupted (0 = all; else a seeded class-balanced subset)
        k: int = 200
        temperature: float = 0.1

        def __post_init__(self):
            for name in self.corruptions:
                check_corruption(name)
            for s in self.severities:
                check_severity(s)
            if self.baseline not in ("random", "none"):
                raise SslAugError(f"recipe key 'eval.robustness.baseline' = {self.baseline!r} is not allowed; "
                                  "choose random or none")
            if self.images < 0 or self.k < 1:
                raise SslAugError(f"eval.robustness needs images >= 0 and k >= 1, got {self.images} and {self.k}")

    def run(self, ctx) -> dict:
        c = self.config
        rows = test_rows(ctx.test[1], c.images, ctx.seed)
        test = (pixels(ctx.test[0][rows]), ctx.test[1][rows])
        features = (ctx.features("train"), ctx.features("test")[rows])
        baseline = random_init_like(ctx.encoder, ctx.seed) if c.baseline == "random" else None
        return robustness_eval(ctx.encoder, ctx.mean, ctx.std, ctx.train, test, c.corruptions, c.severities, c.k,
                               c.temperature, c.linear, baseline, num_classes=ctx.num_classes,
                               batch_size=ctx.batch_size, seed=ctx.seed, amp=ctx.amp, progress=ctx.progress,
                               features=features)

    def rows(self, r: dict) -> list:
        sets = sum(len(v["knn"]) for v in r["by_corruption"].values())
        out = []
        for p in r["clean"]:
            extra = f", mCE {100 * r['mce'][p]:.1f}" if "mce" in r else ""
            out.append((f"{p} under corruption (mean of {sets} sets; drop {100 * r['drop'][p]:.1f} points{extra})",
                        pct(r["mean"][p]), "-", "-"))
        return out

    def section(self, r: dict) -> str:
        base = f"; CE relative to the {r['baseline_name']} = 100" if "mce" in r else ""
        return f"Corruption robustness (top-1 % per severity{base}):\n\n" + robustness_table(r)

    def flat(self, r: dict) -> dict:
        """robustness_<probe>_clean / _mean / _drop / _mce, and robustness_knn_<corruption> (mean over severities)."""
        out = {}
        for p in r["clean"]:
            out[f"robustness_{p}_clean"] = r["clean"][p]
            out[f"robustness_{p}_mean"] = r["mean"][p]
            out[f"robustness_{p}_drop"] = r["drop"][p]
            if "mce" in r:
                out[f"robustness_{p}_mce"] = r["mce"][p]
        for name, entry in r["by_corruption"].items():
            out[f"robustness_knn_{name}"] = sum(entry["knn"]) / len(entry["knn"])
        return out
