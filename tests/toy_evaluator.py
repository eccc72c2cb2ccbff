"""A toy evaluator for the contract tests: one file plus one registration line."""

from dataclasses import dataclass

from ssl_aug.evaluation import Evaluator, EvaluatorConfig, register_evaluator


@register_evaluator("toy_spread")
class ToySpread(Evaluator):
    """Mean distance of the query features from their centroid (times `scale`), and the bank size."""

    @dataclass
    class Config(EvaluatorConfig):
        scale: float = 1.0

    def run(self, ctx) -> dict:
        f = ctx.features("test")
        return {"spread": float((f - f.mean(0)).norm(dim=1).mean()) * self.config.scale, "bank": len(ctx.train[1])}

    def rows(self, result: dict) -> list:
        return [(f"toy spread {result['spread']:.3f}", "-", "-", "-")]
