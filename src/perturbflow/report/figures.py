"""Figures as matplotlib ``Figure`` objects; the caller decides where they go."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
from matplotlib.figure import Figure

from perturbflow.report.benchmark_figures import DEFAULT_METRICS, NOISE_CEILING, draw_metric_bars


def metric_bars(
    results: pd.DataFrame,
    metrics: Sequence[str] = DEFAULT_METRICS,
    ceiling_model: str = NOISE_CEILING,
) -> Figure:
    """Bar chart per metric: mean ± sd over conditions for each subgroup × model (one run).

    ``results`` is the long-format table of :func:`perturbflow.eval.evaluate`. The noise ceiling
    (rows whose model is ``ceiling_model``) is drawn as a dashed line per subgroup, not as a bar.
    For several seeds use :func:`~perturbflow.report.benchmark_figures.metric_bars_over_seeds`.
    """
    stats = (
        results.groupby(["metric", "subgroup", "model"])["value"].agg(["mean", "std"]).reset_index()
    )
    return draw_metric_bars(results, stats, metrics, ceiling_model=ceiling_model)
