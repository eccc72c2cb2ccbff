"""Evaluation of frozen encoders: registered evaluators (ssl_aug.evaluation.base: knn, linear, tta,
invariance, ...), feature extraction, the online kNN monitor. Every entry point takes an encoder as a plain nn.Module
(normalised float (N,3,H,W) -> (N,D)) plus RGB mean/std in [0,1] units, and uint8 images (N,3,H,W)."""

from ssl_aug.evaluation.base import (EVALUATORS, EvalContext, Evaluator, EvaluatorConfig, build_evaluator,
                                     get_evaluator, list_evaluators, register_evaluator)
from ssl_aug.evaluation.knn import KnnEvaluator  # noqa: I001  (registration order: knn, linear, tta, invariance)
from ssl_aug.evaluation.linear import LinearEvaluator
from ssl_aug.evaluation.tta import TtaEvaluator
from ssl_aug.evaluation.invariance import InvarianceEvaluator
from ssl_aug.evaluation.evaluate import (evaluate_encoder, evaluators_from_config, flat_results, format_report,
                                         run_evaluators)
from ssl_aug.evaluation.features import encode, extract_features
from ssl_aug.evaluation.invariance import compare_invariance, default_transforms, invariance_probe, invariance_table
from ssl_aug.evaluation.knn import classification_metrics, knn_classify, knn_evaluate, knn_scores
from ssl_aug.evaluation.linear import LinearClassifier, expected_calibration_error, linear_probe, linear_probe_augmented
from ssl_aug.evaluation.monitor import KnnMonitor
from ssl_aug.evaluation.tta import knn_head, tta_evaluate, tta_predict, tta_views

__all__ = [
    "EVALUATORS", "EvalContext", "Evaluator", "EvaluatorConfig", "build_evaluator", "get_evaluator",
    "list_evaluators", "register_evaluator", "KnnEvaluator", "LinearEvaluator", "TtaEvaluator",
    "InvarianceEvaluator", "evaluators_from_config", "flat_results", "run_evaluators", "KnnMonitor",
    "LinearClassifier", "classification_metrics", "compare_invariance", "default_transforms", "encode",
    "evaluate_encoder", "expected_calibration_error", "extract_features", "format_report", "invariance_probe",
    "invariance_table", "knn_classify", "knn_evaluate", "knn_head", "knn_scores", "linear_probe",
    "linear_probe_augmented", "tta_evaluate", "tta_predict", "tta_views",
]
