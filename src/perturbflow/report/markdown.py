"""Markdown tables of long-format results, for results files generated from run folders."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

HEADLINE = ("pearson_delta_de20", "mse_de20", "discrimination_l1", "energy_distance")


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
