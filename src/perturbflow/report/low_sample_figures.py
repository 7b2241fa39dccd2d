"""Low-sample curves: each metric against the training cells per condition, one line per model.

The input is the long results table of a run with ``train_cells`` levels
(:func:`perturbflow.eval.loop.run` with ``train_cells=``): columns condition, subgroup, metric,
value, model, seed and ``train_cells`` (``"10"``, ``"25"``, ``"all"``). A point is the mean over
seeds of each seed's mean over the chosen conditions, its bar their sd (``ddof=1``; none for one
seed). Levels are evenly spaced on the x axis, numbers in increasing order and ``all`` last, since
``all`` is a different count in every condition.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from perturbflow.eval.metrics import METRICS
from perturbflow.report.markdown import (
    HEADLINE,
    TRAIN_CELLS,
    LowSampleDataError,
    level_order,
    low_sample_table,
)

__all__ = [
    "CURVE_METRICS",
    "TRAIN_CELLS",
    "LowSampleDataError",
    "level_order",
    "low_sample_curves",
    "low_sample_table",
]

CURVE_METRICS = HEADLINE
NOISE_CEILING = "noise_ceiling"


def low_sample_curves(
    results: pd.DataFrame,
    metrics: Sequence[str] = CURVE_METRICS,
    *,
    subgroups: Sequence[str] | None = None,
    ceiling_model: str = NOISE_CEILING,
    title: str | None = None,
) -> Figure:
    """One panel per metric: the metric against training cells per condition, a line per model.

    Points and bars are :func:`perturbflow.report.markdown.low_sample_table`'s mean ± sd over seeds. The noise ceiling
    (``ceiling_model`` rows, the same at every level since the test cells are) is a dashed
    horizontal line, not a model. Metrics absent from ``results`` are skipped.
    """
    table = low_sample_table(results, metrics, subgroups=subgroups)
    shown = [metric for metric in metrics if metric in set(table["metric"])]
    levels = level_order(table[TRAIN_CELLS])
    position = {level: index for index, level in enumerate(levels)}
    models = [m for m in pd.unique(table["model"]) if m != ceiling_model]
    colours = matplotlib.colormaps["tab10"]

    figure = Figure(figsize=(4.0 * len(shown), 3.6), layout="constrained")
    axes = figure.subplots(1, len(shown), squeeze=False)[0]
    for axis, metric in zip(axes, shown, strict=True):
        rows = table[table["metric"] == metric]
        for index, model in enumerate(models):
            line = rows[rows["model"] == model]
            axis.errorbar(
                line[TRAIN_CELLS].map(position).to_numpy(),
                line["mean"].to_numpy(),
                yerr=line["sd"].fillna(0).to_numpy(),
                label=str(model),
                color=colours(index % 10),
                marker="o",
                markersize=3,
                capsize=2,
            )
        ceiling = rows.loc[rows["model"] == ceiling_model, "mean"].to_numpy()
        if len(ceiling) and np.isfinite(ceiling).any():
            axis.axhline(float(np.nanmean(ceiling)), color="k", linestyle="--", linewidth=1)
        arrow = "↑" if METRICS[metric].higher_is_better else "↓"
        axis.set_title(f"{metric} {arrow}", fontsize=10)
        axis.set_xticks(range(len(levels)), levels)
        axis.set_xlabel("training cells per condition")
    (ceiling_handle,) = axes[-1].plot([], [], "k--", linewidth=1)
    handles, labels = axes[-1].get_legend_handles_labels()
    axes[-1].legend(
        [*handles, ceiling_handle],
        [*labels, "noise ceiling"],
        fontsize=7,
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        borderaxespad=0.0,
    )
    if title:
        figure.suptitle(title, fontsize=10)
    return figure
