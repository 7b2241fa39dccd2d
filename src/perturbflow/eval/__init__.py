"""Evaluation: metrics (pure functions + registry), DE genes, and long-format scoring."""

from perturbflow.eval.de import DEError, de_genes
from perturbflow.eval.evaluate import (
    RESULT_COLUMNS,
    SUMMARY_COLUMNS,
    EvaluationError,
    PredictionValidationError,
    evaluate,
    noise_ceiling,
    summarize,
)
from perturbflow.eval.metrics import METRICS, MetricSpec, UnknownMetricError, get_metric

__all__ = [
    "METRICS",
    "RESULT_COLUMNS",
    "SUMMARY_COLUMNS",
    "DEError",
    "EvaluationError",
    "MetricSpec",
    "PredictionValidationError",
    "UnknownMetricError",
    "de_genes",
    "evaluate",
    "get_metric",
    "noise_ceiling",
    "summarize",
]
