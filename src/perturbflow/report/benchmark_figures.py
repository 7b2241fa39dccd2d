"""Benchmark figures for the HTML report, returned as matplotlib ``Figure`` objects.

Figures are built with :class:`matplotlib.figure.Figure` rather than ``pyplot``: they are not
registered with pyplot's global figure manager, so a benchmark that draws dozens of them neither
leaks memory nor triggers the "more than 20 figures" warning. They still save (``savefig``) and
display in notebooks like any other figure.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from perturbflow.eval.metrics import METRICS

__all__ = [
    "FigureDataError",
    "delta_scatter",
    "draw_metric_bars",
    "gi_scatter",
    "metric_bars_over_seeds",
    "program_heatmap",
]

NOISE_CEILING = "noise_ceiling"
DEFAULT_METRICS = ("pearson_delta", "pearson_delta_de20", "mse_de20", "energy_distance")
_RESULT_COLUMNS = ("condition", "subgroup", "metric", "value", "model", "seed")
PROGRAM_LABEL_GENES = 3
_LABEL_LIMIT = 40  # above this many points, text labels would only be clutter


class FigureDataError(ValueError):
    """The table handed to a figure function lacks what the figure needs."""


def metric_bars_over_seeds(
    results: pd.DataFrame,
    metrics: Sequence[str] = DEFAULT_METRICS,
    *,
    ceiling_model: str = NOISE_CEILING,
) -> Figure:
    """One panel per metric: bars per subgroup × model, mean ± sd over seeds.

    Each seed's conditions are averaged first (``nan`` values skipped), then the per-seed means are
    averaged; error bars are their sd (``ddof=1``; none for a single seed). The noise ceiling (rows
    whose model is ``ceiling_model``, averaged the same way) is a dashed line over each subgroup,
    not a bar. Tick labels give the number of distinct conditions per subgroup. Metrics absent from
    ``results`` are skipped.

    ``results`` is the long-format table of :func:`perturbflow.eval.evaluate.evaluate` (columns
    condition, subgroup, metric, value, model, seed), several models and seeds concatenated.
    """
    _require_columns(results, _RESULT_COLUMNS, "results")
    per_seed = (
        results.groupby(["metric", "subgroup", "model", "seed"])["value"].mean().reset_index()
    )
    stats = per_seed.groupby(["metric", "subgroup", "model"])["value"].agg(["mean", "std"])
    return draw_metric_bars(results, stats.reset_index(), metrics, ceiling_model=ceiling_model)


def draw_metric_bars(
    results: pd.DataFrame,
    stats: pd.DataFrame,
    metrics: Sequence[str],
    *,
    ceiling_model: str = NOISE_CEILING,
) -> Figure:
    """Draw bars from ``stats`` (columns metric, subgroup, model, mean, std), one panel per metric.

    The caller decides what the mean and sd are over (seeds, or conditions of one run);
    ``results`` gives the subgroups and their condition counts for the tick labels. The model
    ``ceiling_model`` is drawn as a dashed line per subgroup, not as a bar.
    """
    present = set(results["metric"])
    metrics = [metric for metric in metrics if metric in present]
    if not metrics:
        raise FigureDataError(
            f"none of the requested metrics is in the results table; it holds {sorted(present)}"
        )
    models = sorted(str(m) for m in results["model"].unique() if m != ceiling_model)
    colours = matplotlib.colormaps["tab10"]
    width = 0.8 / max(len(models), 1)

    figure = Figure(figsize=(4.2 * len(metrics), 3.8), layout="constrained")
    axes = figure.subplots(1, len(metrics), squeeze=False)[0]
    for axis, metric in zip(axes, metrics, strict=True):
        rows = results[results["metric"] == metric]
        subgroups = sorted(rows["subgroup"].unique())
        n_conditions = (
            rows[rows["model"] != ceiling_model].groupby("subgroup")["condition"].nunique()
        )
        table = stats[stats["metric"] == metric]
        for index, model in enumerate(models):
            bars = table[table["model"] == model].set_index("subgroup").reindex(subgroups)
            positions = np.arange(len(subgroups)) + (index - (len(models) - 1) / 2) * width
            axis.bar(
                positions,
                bars["mean"].to_numpy(),
                width,
                yerr=bars["std"].fillna(0).to_numpy(),
                label=model,
                color=colours(index % 10),
                capsize=2,
            )
        ceiling = table[table["model"] == ceiling_model].set_index("subgroup").reindex(subgroups)
        for position, value in enumerate(ceiling["mean"].to_numpy()):
            if np.isfinite(value):
                axis.hlines(value, position - 0.45, position + 0.45, colors="k", linestyles="--")
        labels = [f"{s}\n(n={int(n_conditions.get(s, 0))})" for s in subgroups]
        axis.set_xticks(np.arange(len(subgroups)), labels, rotation=30, ha="right", fontsize=8)
        axis.set_title(_metric_title(metric))
    (ceiling_handle,) = axes[-1].plot([], [], "k--")
    handles, labels = axes[-1].get_legend_handles_labels()
    # Outside the axes, so it never covers a bar or the ceiling line.
    axes[-1].legend(
        [*handles, ceiling_handle],
        [*labels, "noise ceiling"],
        fontsize=7,
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        borderaxespad=0.0,
    )
    return figure


def delta_scatter(
    pred_delta: pd.Series,
    real_delta: pd.Series,
    genes: Sequence[str],
    title: str = "",
) -> Figure:
    """Predicted vs real change from control on ``genes`` (e.g. a condition's top DE genes).

    ``pred_delta`` and ``real_delta`` are indexed by gene symbol. The dashed diagonal is y = x; the
    title ends with the Pearson correlation over ``genes`` (``nan`` if fewer than two genes or a
    side is constant). Points are labelled with their gene when there are at most 40.
    """
    genes = list(genes)
    for name, series in (("pred_delta", pred_delta), ("real_delta", real_delta)):
        missing = [gene for gene in genes if gene not in series.index]
        if missing:
            raise FigureDataError(
                f"{name} has no value for {len(missing)} gene(s): {missing[:10]}; index it by "
                "gene symbol and pass genes from the same gene set"
            )
    real = real_delta.reindex(genes).to_numpy(dtype=np.float64)  # (n,)
    pred = pred_delta.reindex(genes).to_numpy(dtype=np.float64)  # (n,)
    figure = Figure(figsize=(4.2, 4.0), layout="constrained")
    axis = figure.subplots()
    _scatter_with_identity(axis, real, pred, genes)
    axis.set_xlabel("real delta")
    axis.set_ylabel("predicted delta")
    heading = f"{title}\n" if title else ""
    axis.set_title(f"{heading}Pearson r = {_pearson(real, pred):.3f}", fontsize=10)
    return figure


# Fewest doubles for which a GI panel reports a correlation (two points always give ±1).
MIN_GI_POINTS = 3


def gi_scatter(
    table: pd.DataFrame,
    *,
    score: str = "score",
    predicted: str = "predicted",
    real: str = "real",
    label: str = "condition",
) -> Figure:
    """Predicted vs real genetic-interaction score per double, one panel per score.

    ``table`` is long-format: one row per double × score, with the score's name in column
    ``score`` (e.g. ``magnitude``, ``dominance``), its value from predicted deltas in ``predicted``,
    from real deltas in ``real``, and the double's name in ``label``. Each panel has a y = x line,
    labels on the points (at most 40), and the number of doubles and their Pearson correlation
    in its title (``nan`` below ``MIN_GI_POINTS`` doubles, where a correlation means nothing).
    """
    _require_columns(table, (score, predicted, real, label), "table")
    if table.empty:
        raise FigureDataError("the GI table has no rows; score at least one double")
    names = list(pd.unique(table[score]))
    figure = Figure(figsize=(3.8 * len(names), 3.8), layout="constrained")
    axes = figure.subplots(1, len(names), squeeze=False)[0]
    for axis, name in zip(axes, names, strict=True):
        rows = table[table[score] == name]
        x = rows[real].to_numpy(dtype=np.float64)  # (n,)
        y = rows[predicted].to_numpy(dtype=np.float64)  # (n,)
        _scatter_with_identity(axis, x, y, [str(value) for value in rows[label]])
        axis.set_xlabel(f"real {name}")
        axis.set_ylabel(f"predicted {name}")
        r = _pearson(x, y) if len(x) >= MIN_GI_POINTS else float("nan")
        axis.set_title(f"{name}\nn = {len(x)}, Pearson r = {r:.3f}", fontsize=10)
    return figure


def program_heatmap(
    programs: pd.DataFrame,
    deltas: pd.DataFrame,
    *,
    title: str = "Mean delta per gene program",
) -> Figure:
    """Mean change from control per gene program (columns) for each condition (rows).

    ``programs`` has columns ``gene``, ``program`` and ``order`` (as
    :meth:`perturbflow.programs.grc.GenePrograms.to_frame`); programs are shown in GRC order (by
    their smallest ``order``). ``deltas`` is conditions × genes; genes without a program are
    ignored, and programs without a gene in ``deltas`` are dropped. The colour map is diverging
    and centred at 0 (symmetric limits); each column is labelled by the program's
    ``PROGRAM_LABEL_GENES`` most responsive genes and how many more it holds.
    """
    _require_columns(programs, ("gene", "program", "order"), "programs")
    known = programs[programs["gene"].isin(deltas.columns)]
    if known.empty or deltas.empty:
        raise FigureDataError(
            "no gene of the programs table is a column of deltas; pass deltas as a conditions × "
            "genes table with gene symbols as columns"
        )
    program_order = known.groupby("program")["order"].min().sort_values(kind="stable").index
    members = known.groupby("program")["gene"].agg(list)
    means = np.column_stack(
        [
            deltas[members[program]].to_numpy(dtype=np.float64).mean(axis=1)
            for program in program_order
        ]
    )  # (C, K)
    limit = float(np.nanmax(np.abs(means))) if np.isfinite(means).any() else 1.0
    limit = limit if limit > 0 else 1.0

    n_conditions, n_programs = means.shape
    figure = Figure(
        figsize=(min(2.5 + 0.45 * n_programs, 16), min(1.5 + 0.3 * n_conditions, 20)),
        layout="constrained",
    )
    axis = figure.subplots()
    image = axis.imshow(means, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    # Each program is named by its genes that move most across the conditions shown.
    spread = deltas.abs().mean(axis=0)
    names = [
        ", ".join(spread[members[program]].sort_values(ascending=False).index[:PROGRAM_LABEL_GENES])
        + f" (+{len(members[program]) - PROGRAM_LABEL_GENES})"
        * (len(members[program]) > PROGRAM_LABEL_GENES)
        for program in program_order
    ]
    axis.set_xticks(np.arange(n_programs), names, rotation=90, fontsize=7)
    axis.set_yticks(np.arange(n_conditions), [str(c) for c in deltas.index], fontsize=7)
    axis.set_xlabel("gene program (its most responsive genes)")
    axis.set_title(title, fontsize=10)
    figure.colorbar(image, ax=axis, label="mean delta")
    return figure


# -- helpers -------------------------------------------------------------------------------------


def _require_columns(table: pd.DataFrame, columns: Sequence[str], name: str) -> None:
    absent = [column for column in columns if column not in table.columns]
    if absent:
        raise FigureDataError(
            f"{name} lacks column(s) {absent}; it has {list(table.columns)}, expected {list(columns)}"
        )


def _metric_title(metric: str) -> str:
    spec = METRICS.get(metric)
    if spec is None:
        return metric
    return f"{metric} ({'higher' if spec.higher_is_better else 'lower'} is better)"


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation of finite pairs; ``nan`` when undefined."""
    finite = np.isfinite(x) & np.isfinite(y)
    x, y = x[finite], y[finite]
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def _scatter_with_identity(axis: Axes, x: np.ndarray, y: np.ndarray, labels: list[str]) -> None:
    """Scatter ``y`` against ``x``, a dashed y = x line over their joint range, optional labels."""
    axis.scatter(x, y, s=18, alpha=0.8)
    values = np.concatenate([x, y])
    values = values[np.isfinite(values)]
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
    pad = 0.05 * (high - low) if high > low else 0.5
    axis.plot([low - pad, high + pad], [low - pad, high + pad], "k--", lw=0.8, label="y = x")
    axis.axhline(0, color="0.8", lw=0.5, zorder=0)
    axis.axvline(0, color="0.8", lw=0.5, zorder=0)
    if len(labels) <= _LABEL_LIMIT:
        for text, x_value, y_value in zip(labels, x, y, strict=True):
            if np.isfinite(x_value) and np.isfinite(y_value):
                axis.annotate(
                    text, (x_value, y_value), fontsize=6, xytext=(2, 2), textcoords="offset points"
                )
