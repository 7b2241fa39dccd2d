"""Low-sample curves: a line per model over the levels, mean ± sd over seeds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from perturbflow.report.low_sample_figures import (
    LowSampleDataError,
    level_order,
    low_sample_curves,
    low_sample_table,
)


def _results() -> pd.DataFrame:
    """Two models and the ceiling, 3 levels, 2 seeds, 2 conditions: value = f(level, seed)."""
    rows = []
    for level, base in (("all", 0.9), ("10", 0.5), ("25", 0.7)):
        for model, shift in (("additive", 0.0), ("other", -0.1), ("noise_ceiling", 0.05)):
            for seed in (1, 2):
                for condition in ("A+B", "C+D"):
                    for metric in ("pearson_delta_de20", "mse_de20"):
                        value = base + shift + 0.01 * seed + (0.02 if condition == "A+B" else 0)
                        rows.append((condition, "combo_seen2", metric, value, model, seed, level))
    columns = ["condition", "subgroup", "metric", "value", "model", "seed", "train_cells"]
    return pd.DataFrame(rows, columns=columns)


def test_table_is_the_mean_and_sd_over_seeds_in_level_order():
    table = low_sample_table(_results(), ["pearson_delta_de20"])
    assert list(pd.unique(table["train_cells"])) == ["10", "25", "all"]
    row = table.query("train_cells == '10' and model == 'additive'").iloc[0]
    # per-seed means 0.52 and 0.53 (conditions 0.5/0.52 + 0.01·seed)
    assert row["mean"] == pytest.approx(0.525)
    assert row["sd"] == pytest.approx(np.std([0.52, 0.53], ddof=1))
    assert (row["n_seeds"], row["n_conditions"]) == (2, 2)


def test_figure_has_one_line_per_model_and_the_ceiling_dashed():
    figure = low_sample_curves(_results(), ["pearson_delta_de20", "mse_de20", "energy_distance"])
    axes = figure.axes
    assert len(axes) == 2  # energy_distance is not in the results
    for axis in axes:
        assert len(axis.containers) == 2  # one error-bar line per model, the ceiling is not one
        assert [t.get_text() for t in axis.get_xticklabels()] == ["10", "25", "all"]
    legend = [text.get_text() for text in axes[-1].get_legend().get_texts()]
    assert legend == ["additive", "other", "noise ceiling"]
    line = axes[0].containers[0].lines[0]
    np.testing.assert_allclose(line.get_ydata(), [0.525, 0.725, 0.925])


def test_results_without_levels_are_refused():
    with pytest.raises(LowSampleDataError, match="train_cells"):
        low_sample_table(_results().drop(columns="train_cells"))


def test_levels_sort_numerically_with_all_last():
    assert level_order(["all", "50", "10", 25, "10"]) == ["10", "25", "50", "all"]
