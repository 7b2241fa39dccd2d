"""Reliability plot of prediction intervals: nominal vs empirical coverage, returned as a Figure.

Built with :class:`matplotlib.figure.Figure` (not pyplot), like the benchmark figures, so a
script drawing many of them leaks nothing.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from perturbflow.eval.calibration import ALL_CONDITIONS

__all__ = ["reliability_plot"]

_REQUIRED = ("model", "interval", "subgroup", "nominal", "coverage")


class ReliabilityDataError(ValueError):
    """The coverage table handed to the plot lacks what it needs."""


def reliability_plot(coverage: pd.DataFrame, *, subgroup: str = ALL_CONDITIONS) -> Figure:
    """One panel per interval kind, one line per model: empirical vs nominal coverage.

    ``coverage`` is the long table of :func:`perturbflow.eval.calibration.coverage_table`,
    possibly several screens or split seeds concatenated: each point is the mean of the rows of
    one (model, interval, nominal) in ``subgroup``, its error bar their sd (none for one row).
    The diagonal is perfect calibration; below it, intervals are too narrow.
    """
    missing = [column for column in _REQUIRED if column not in coverage.columns]
    if missing:
        raise ReliabilityDataError(f"coverage table lacks column(s) {missing}")
    rows = coverage[coverage["subgroup"] == subgroup]
    if rows.empty:
        raise ReliabilityDataError(
            f"no rows for subgroup {subgroup!r}; subgroups: {sorted(coverage['subgroup'].unique())}"
        )
    points = (
        rows.groupby(["interval", "model", "nominal"], sort=False)["coverage"]
        .agg(["mean", "std"])
        .reset_index()
    )
    kinds = list(dict.fromkeys(points["interval"]))
    figure = Figure(figsize=(3.6 * len(kinds), 3.6), layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, len(kinds), sharey=True, squeeze=False)[0])
    for axis, kind in zip(axes, kinds, strict=True):
        axis.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="ideal")
        for model, line in points[points["interval"] == kind].groupby("model", sort=False):
            line = line.sort_values("nominal")
            axis.errorbar(
                line["nominal"].to_numpy(dtype=float),
                line["mean"].to_numpy(dtype=float),
                yerr=line["std"].fillna(0.0).to_numpy(dtype=float),
                marker="o",
                capsize=3,
                label=str(model),
            )
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1)
        axis.set_aspect("equal")
        axis.set_title(str(kind), fontsize=9)
        axis.set_xlabel("nominal coverage")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("empirical coverage")
    axes[-1].legend(fontsize=7, loc="upper left")
    return figure
