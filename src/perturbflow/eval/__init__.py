"""Evaluation: metrics (pure functions + registry), DE genes, long-format scoring, the run loop."""

from perturbflow.eval.de import DEError, de_genes
from perturbflow.eval.evaluate import (
    RESULT_COLUMNS,
    SUMMARY_COLUMNS,
    EvaluationError,
    PredictionValidationError,
    condition_sizes,
    evaluate,
    noise_ceiling,
    summarize,
)
from perturbflow.eval.loop import RunResult, RunSpec, Seeds, model_runs, run
from perturbflow.eval.metrics import METRICS, MetricSpec, UnknownMetricError, get_metric
from perturbflow.eval.summary import benchmark_summary

__all__ = [
    "METRICS",
    "RESULT_COLUMNS",
    "SUMMARY_COLUMNS",
    "DEError",
    "EvaluationError",
    "MetricSpec",
    "PredictionValidationError",
    "RunResult",
    "RunSpec",
    "Seeds",
    "UnknownMetricError",
    "benchmark_summary",
    "condition_sizes",
    "de_genes",
    "evaluate",
    "get_metric",
    "model_runs",
    "noise_ceiling",
    "run",
    "summarize",
]
