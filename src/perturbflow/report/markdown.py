"""Markdown tables of long-format results, for results files generated from run folders.

Light on purpose (pandas only): scripts table results without loading torch. The low-sample
table (:func:`low_sample_table`, metric by training cells per condition) lives here for that
reason; :mod:`perturbflow.report.low_sample_figures` draws it.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

HEADLINE = ("pearson_delta_de20", "mse_de20", "discrimination_l1", "energy_distance")

TRAIN_CELLS = "train_cells"
_COLUMNS = ("condition", "subgroup", "metric", "value", "model", "seed", TRAIN_CELLS)


class LowSampleDataError(ValueError):
    """The results table lacks what a low-sample curve needs."""


def level_order(levels: Sequence[object]) -> list[str]:
    """Distinct levels as text, numbers ascending and anything else (``all``) after them."""
    names = list(dict.fromkeys(str(level) for level in levels))
    numbers = sorted((name for name in names if name.isdigit()), key=int)
    return numbers + [name for name in names if not name.isdigit()]


def low_sample_table(
    results: pd.DataFrame,
    metrics: Sequence[str] = HEADLINE,
    *,
    subgroups: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Mean ± sd over seeds per (train_cells, model, metric), long format.

    Each seed's values are first averaged over the conditions of ``subgroups`` (all test
    conditions when ``None``; ``nan`` skipped). Columns: train_cells (text), model, metric,
    mean, sd, n_seeds, n_conditions; rows in level order (:func:`level_order`), then model and
    metric as they first appear.
    """
    absent = [column for column in _COLUMNS if column not in results.columns]
    if absent:
        raise LowSampleDataError(
            f"results lack column(s) {absent}; a low-sample curve needs the results of a run "
            "with train_cells levels (perturbflow benchmark --train-cells 10,25,all)"
        )
    rows = results[results["metric"].isin(metrics)]
    if subgroups is not None:
        rows = rows[rows["subgroup"].isin(subgroups)]
    if rows.empty:
        raise LowSampleDataError(
            f"no rows of metrics {list(metrics)}"
            + (f" in subgroups {list(subgroups)}" if subgroups is not None else "")
            + f"; the results hold metrics {sorted(set(results['metric']))} and subgroups "
            f"{sorted(set(results['subgroup']))}"
        )
    rows = rows.assign(**{TRAIN_CELLS: rows[TRAIN_CELLS].astype(str)})
    keys = [TRAIN_CELLS, "model", "metric"]
    per_seed = rows.groupby([*keys, "seed"], sort=False)["value"].mean()
    table = per_seed.groupby(keys, sort=False).agg(mean="mean", sd="std", n_seeds="count")
    table["n_conditions"] = rows.groupby(keys, sort=False)["condition"].nunique()
    table = table.reset_index()
    rank = {level: index for index, level in enumerate(level_order(table[TRAIN_CELLS]))}
    return table.sort_values(TRAIN_CELLS, key=lambda s: s.map(rank), kind="stable").reset_index(
        drop=True
    )


def metrics_table(results: pd.DataFrame, metrics: Sequence[str] = HEADLINE) -> str:
    """Subgroup × model table: per cell, the mean ± sd over seeds of the per-seed mean over
    conditions (the sd is left out with one seed). Rows in order of first appearance."""
    per_seed = (
        results[results["metric"].isin(metrics)]
        .groupby(["subgroup", "model", "metric", "seed"], sort=False)["value"]
        .mean()
        .groupby(["subgroup", "model", "metric"], sort=False)
        .agg(["mean", "std"])
    )
    lines = [
        "| subgroup | model | " + " | ".join(metrics) + " |",
        "|---|---|" + "---|" * len(metrics),
    ]
    for subgroup, model in per_seed.index.droplevel("metric").unique():
        cells = []
        for metric in metrics:
            key = (subgroup, model, metric)
            if key in per_seed.index:
                mean, sd = per_seed.loc[key]
                cells.append(f"{mean:.3f} ± {sd:.3f}" if sd == sd else f"{mean:.3f}")
            else:
                cells.append("")
        lines.append(f"| {subgroup} | {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def low_sample_markdown(
    results: pd.DataFrame,
    metrics: Sequence[str] = HEADLINE,
    *,
    subgroups: Sequence[str] | None = None,
) -> str:
    """Metric × model table with a column per ``train_cells`` level (``10`` … ``all``): per cell,
    the mean ± sd over seeds of the per-seed mean over the conditions of ``subgroups`` (all when
    ``None``), as in :func:`low_sample_table`."""
    table = low_sample_table(results, metrics, subgroups=subgroups)
    levels = level_order(table[TRAIN_CELLS])
    cells = table.set_index(["metric", "model", TRAIN_CELLS])
    lines = [
        "| metric | model | " + " | ".join(f"{level} cells" for level in levels) + " |",
        "|---|---|" + "---|" * len(levels),
    ]
    for metric in [m for m in metrics if m in set(table["metric"])]:
        for model in pd.unique(table.loc[table["metric"] == metric, "model"]):
            row = []
            for level in levels:
                key = (metric, model, level)
                if key not in cells.index:
                    row.append("")
                    continue
                mean, sd = cells.loc[key, "mean"], cells.loc[key, "sd"]
                row.append(f"{mean:.3f} ± {sd:.3f}" if sd == sd else f"{mean:.3f}")
            lines.append(f"| {metric} | {model} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"
