"""The reliability plot draws the coverage table's means, one line per model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from perturbflow.report.calibration_figures import ReliabilityDataError, reliability_plot


def _table() -> pd.DataFrame:
    rows = []
    for interval in ("gaussian", "quantile"):
        for model, coverage in (("a", (0.3, 0.5, 0.6)), ("b", (0.5, 0.8, 0.9))):
            for seed in (1, 2):
                for nominal, value in zip((0.5, 0.8, 0.9), coverage, strict=True):
                    rows.append(
                        {
                            "model": model,
                            "interval": interval,
                            "subgroup": "all",
                            "nominal": nominal,
                            "coverage": value + (0.02 if seed == 1 else -0.02),
                            "seed": seed,
                        }
                    )
    return pd.DataFrame(rows)


def test_one_panel_per_interval_and_one_line_per_model_at_the_mean_over_rows():
    figure = reliability_plot(_table())
    assert isinstance(figure, Figure)
    axes = figure.axes
    assert [axis.get_title() for axis in axes] == ["gaussian", "quantile"]
    assert "ideal" in {line.get_label() for line in axes[0].get_lines()}
    lines = {bars.get_label(): bars.lines[0] for bars in axes[0].containers}
    assert set(lines) == {"a", "b"}
    np.testing.assert_allclose(lines["a"].get_xdata(), [0.5, 0.8, 0.9])
    np.testing.assert_allclose(lines["a"].get_ydata(), [0.3, 0.5, 0.6])
    np.testing.assert_allclose(lines["b"].get_ydata(), [0.5, 0.8, 0.9])


def test_missing_columns_or_subgroup_are_named():
    with pytest.raises(ReliabilityDataError, match="interval"):
        reliability_plot(_table().drop(columns="interval"))
    with pytest.raises(ReliabilityDataError, match="no rows for subgroup 'x'"):
        reliability_plot(_table(), subgroup="x")
