"""Figures are returned as matplotlib Figures with one panel per metric."""

from __future__ import annotations

import pandas as pd
import pytest

from perturbflow.report.figures import metric_bars


def _results():
    rows = []
    for subgroup in ("combo_seen1", "unseen_single"):
        for model, value in (("additive", 0.5), ("control_mean", 0.0), ("noise_ceiling", 0.9)):
            for condition in ("A", "B"):
                rows.append((condition, subgroup, "pearson_delta", value, model, 0))
    return pd.DataFrame(rows, columns=["condition", "subgroup", "metric", "value", "model", "seed"])


def test_metric_bars_draws_models_and_ceiling():
    figure = metric_bars(_results(), metrics=("pearson_delta", "mse_de20"))
    axes = figure.axes
    assert len(axes) == 1  # mse_de20 absent from the table is skipped
    heights = sorted(round(patch.get_height(), 3) for patch in axes[0].patches)
    assert heights == [0.0, 0.0, 0.5, 0.5]  # 2 models × 2 subgroups; the ceiling is no bar
    ceiling_lines = [c for c in axes[0].collections if c.get_linestyle()[0][1] is not None]
    assert len(ceiling_lines) == 2
    labels = [text.get_text() for text in axes[0].get_legend().get_texts()]
    assert sorted(labels) == ["additive", "control_mean", "noise ceiling"]


def test_metric_bars_without_known_metrics_fails_clearly():
    with pytest.raises(ValueError, match="none of the requested metrics"):
        metric_bars(_results(), metrics=("energy_distance",))
