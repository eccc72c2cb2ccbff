"""kNN accuracy over a grid of k and temperature T (as solo-learn's main_knn sweeps them), cosine
similarity on L2-normalised features, one faiss search per T for all k."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from ssl_aug.errors import SslAugError
from ssl_aug.evaluation.base import Evaluator, EvaluatorConfig, pct, register_evaluator
from ssl_aug.evaluation.knn import knn_evaluate

KS = (1, 5, 10, 20, 50, 100, 200)
TEMPERATURES = (0.02, 0.05, 0.07, 0.1, 0.2, 0.5)


def knn_sweep(train_f, train_y, test_f, test_y, ks: Sequence[int] = KS, temperatures: Sequence[float] = TEMPERATURES,
              num_classes: int | None = None) -> dict:
    """{"top1": {T: {k: top-1}}, "ks", "temperatures", "best": {"k", "temperature", "top1"}}; k above the
    bank size is left out."""
    n = len(train_y)
    ks = [int(k) for k in ks if int(k) <= n] or [n]
    table = {}
    for t in temperatures:
        r = knn_evaluate(train_f, train_y, test_f, test_y, ks=ks, temperature=float(t), num_classes=num_classes)
        table[float(t)] = {int(k): r["by_k"][k]["top1"] for k in ks}
    best = max(((t, k, a) for t, row in table.items() for k, a in row.items()), key=lambda x: x[2])
    return {"top1": table, "ks": ks, "temperatures": [float(t) for t in temperatures],
            "best": {"temperature": best[0], "k": best[1], "top1": best[2]}}


def knn_sweep_table(result: dict) -> str:
    """Markdown: rows T, columns k, top-1 %; the best cell in bold."""
    ks, best = result["ks"], result["best"]
    lines = ["| T \\ k | " + " | ".join(str(k) for k in ks) + " |", "|---|" + "---|" * len(ks)]
    for t, row in result["top1"].items():
        cells = [(f"**{100 * a:.2f}**" if (float(t), int(k)) == (best["temperature"], best["k"]) else f"{100 * a:.2f}")
                 for k, a in ((k, row[k] if k in row else row[str(k)]) for k in ks)]
        lines.append(f"| {float(t):g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


@register_evaluator("knn_sweep")
class KnnSweepEvaluator(Evaluator):
    """kNN top-1 for every (k, T) of a grid (solo-learn's main_knn): the table and the best cell."""

    @dataclass
    class Config(EvaluatorConfig):
        ks: list = field(default_factory=lambda: list(KS))
        temperatures: list = field(default_factory=lambda: list(TEMPERATURES))

        def __post_init__(self):
            if not self.ks or min(self.ks) < 1 or not self.temperatures or min(self.temperatures) <= 0:
                raise SslAugError(f"eval.knn_sweep needs ks >= 1 and temperatures > 0, got {self.ks} and "
                                  f"{self.temperatures}")

    def run(self, ctx) -> dict:
        return knn_sweep(ctx.features("train"), ctx.train[1], ctx.features("test"), ctx.test[1], self.config.ks,
                         self.config.temperatures, ctx.num_classes)

    def rows(self, r: dict) -> list:
        b = r["best"]
        return [(f"kNN sweep: best of {len(r['ks'])} k x {len(r['temperatures'])} T (k={b['k']}, T={b['temperature']:g})",
                 pct(b["top1"]), "-", "-")]

    def section(self, r: dict) -> str:
        return "kNN top-1 % per temperature T (rows) and k (columns):\n\n" + knn_sweep_table(r)

    def flat(self, r: dict) -> dict:
        return {"knn_sweep_best_top1": r["best"]["top1"]}
