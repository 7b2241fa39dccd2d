"""Figures as matplotlib ``Figure`` objects; the caller decides where they go."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

NOISE_CEILING = "noise_ceiling"


def metric_bars(
    results: pd.DataFrame,
    metrics: Sequence[str] = ("pearson_delta", "pearson_delta_de20", "mse_de20", "energy_distance"),
    ceiling_model: str = NOISE_CEILING,
):
    """Bar chart per metric: mean ± sd over conditions for each subgroup × model.

    ``results`` is the long-format table of :func:`perturbflow.eval.evaluate`. The noise ceiling
    (rows whose model is ``ceiling_model``) is drawn as a dashed line per subgroup, not as a bar.
    """
    metrics = [metric for metric in metrics if metric in set(results["metric"])]
    if not metrics:
        raise ValueError("none of the requested metrics is in the results table")
    subgroups = sorted(results["subgroup"].unique())
    models = sorted(m for m in results["model"].unique() if m != ceiling_model)
    stats = (
        results.groupby(["metric", "subgroup", "model"])["value"].agg(["mean", "std"]).reset_index()
    )
    figure, axes = plt.subplots(
        1, len(metrics), figsize=(4.2 * len(metrics), 3.6), squeeze=False, constrained_layout=True
    )
    width = 0.8 / max(len(models), 1)
    colours = plt.get_cmap("tab10")
    for axis, metric in zip(axes[0], metrics, strict=True):
        table = stats[stats["metric"] == metric]
        for index, model in enumerate(models):
            rows = table[table["model"] == model].set_index("subgroup").reindex(subgroups)
            positions = np.arange(len(subgroups)) + (index - (len(models) - 1) / 2) * width
            axis.bar(
                positions,
                rows["mean"].to_numpy(),
                width,
                yerr=rows["std"].fillna(0).to_numpy(),
                label=model,
                color=colours(index % 10),
                capsize=2,
            )
        ceiling = table[table["model"] == ceiling_model].set_index("subgroup").reindex(subgroups)
        for position, value in enumerate(ceiling["mean"].to_numpy()):
            if np.isfinite(value):
                axis.hlines(value, position - 0.45, position + 0.45, colors="k", linestyles="--")
        axis.set_xticks(np.arange(len(subgroups)), subgroups, rotation=30, ha="right")
        axis.set_title(metric)
    axes[0][-1].plot([], [], "k--", label="noise ceiling")
    axes[0][-1].legend(fontsize=7, loc="best")
    return figure
