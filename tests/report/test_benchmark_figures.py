"""Benchmark figures draw exactly what the hand-made tables say."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from perturbflow.report.benchmark_figures import (
    FigureDataError,
    delta_scatter,
    gi_scatter,
    metric_bars_over_seeds,
    program_heatmap,
)

COLUMNS = ["condition", "subgroup", "metric", "value", "model", "seed"]


def _results() -> pd.DataFrame:
    """Two seeds, two subgroups; per-seed subgroup means chosen to be easy to average by hand."""
    values = {
        # (subgroup, model, seed): values of conditions A and B
        ("combo", "additive", 1): (0.2, 0.4),  # seed mean 0.3
        ("combo", "additive", 2): (0.5, 0.5),  # seed mean 0.5  → 0.4 ± sd(0.3, 0.5)
        ("combo", "ridge", 1): (0.6, 0.6),
        ("combo", "ridge", 2): (0.6, 0.6),  # → 0.6 ± 0
        ("combo", "noise_ceiling", 1): (0.9, 0.9),
        ("combo", "noise_ceiling", 2): (0.7, 0.7),  # ceiling 0.8
        ("single", "additive", 1): (0.1, np.nan),  # nan skipped: seed mean 0.1
        ("single", "additive", 2): (0.3, 0.3),  # → 0.2
        ("single", "ridge", 1): (0.0, 0.2),
        ("single", "ridge", 2): (0.0, 0.0),  # → 0.05
        ("single", "noise_ceiling", 1): (0.5, 0.5),
        ("single", "noise_ceiling", 2): (0.5, 0.5),  # ceiling 0.5
    }
    rows = []
    for (subgroup, model, seed), pair in values.items():
        for condition, value in zip((f"{subgroup}_A", f"{subgroup}_B"), pair, strict=True):
            rows.append((condition, subgroup, "pearson_delta", value, model, seed))
            rows.append((condition, subgroup, "mse_de20", 2 * value, model, seed))
    return pd.DataFrame(rows, columns=COLUMNS)


def _dashed_segments(axis) -> list[float]:
    """y values of the dashed horizontal ceiling segments (``hlines``) on ``axis``."""
    heights = []
    for collection in axis.collections:
        if collection.get_linestyle()[0][1] is None:  # solid: error bars
            continue
        heights += [segment[0][1] for segment in collection.get_segments()]
    return heights


def test_metric_bars_over_seeds_average_seed_means():
    figure = metric_bars_over_seeds(_results(), metrics=("pearson_delta", "mse_de20", "absent"))
    assert isinstance(figure, Figure)
    assert len(figure.axes) == 2  # the absent metric is skipped
    axis = figure.axes[0]
    assert axis.get_title() == "pearson_delta (higher is better)"
    assert figure.axes[1].get_title() == "mse_de20 (lower is better)"
    # Bars: models sorted (additive, ridge), subgroups sorted (combo, single).
    heights = [round(patch.get_height(), 6) for patch in axis.patches]
    assert heights == [0.4, 0.2, 0.6, 0.05]
    mse_heights = [round(patch.get_height(), 6) for patch in figure.axes[1].patches]
    assert mse_heights == [0.8, 0.4, 1.2, 0.1]
    assert sorted(np.round(_dashed_segments(axis), 6)) == [0.5, 0.8]
    labels = [text.get_text() for text in figure.axes[-1].get_legend().get_texts()]
    assert labels == ["additive", "ridge", "noise ceiling"]
    ticks = [tick.get_text() for tick in axis.get_xticklabels()]
    assert ticks == ["combo\n(n=2)", "single\n(n=2)"]


def test_metric_bars_over_seeds_error_bars_are_sd_over_seeds():
    figure = metric_bars_over_seeds(_results(), metrics=("pearson_delta",))
    axis = figure.axes[0]
    error_bars = [c for c in axis.collections if c.get_linestyle()[0][1] is None]
    spans = sorted(
        round(segment[1][1] - segment[0][1], 6)
        for collection in error_bars
        for segment in collection.get_segments()
    )
    sd_additive_combo = np.std([0.3, 0.5], ddof=1)
    sd_additive_single = np.std([0.1, 0.3], ddof=1)
    sd_ridge_single = np.std([0.1, 0.0], ddof=1)
    expected = [0.0, 2 * sd_ridge_single, 2 * sd_additive_combo, 2 * sd_additive_single]
    np.testing.assert_allclose(spans, sorted(expected), atol=1e-6)


def test_metric_bars_over_seeds_without_metrics_or_columns_fails_clearly():
    with pytest.raises(FigureDataError, match="none of the requested metrics"):
        metric_bars_over_seeds(_results(), metrics=("energy_distance",))
    with pytest.raises(FigureDataError, match="seed"):
        metric_bars_over_seeds(_results().drop(columns="seed"))


def _identity_line(axis):
    (line,) = [line for line in axis.lines if line.get_label() == "y = x"]
    return line


def test_delta_scatter_plots_selected_genes_with_identity_and_pearson():
    real = pd.Series({"g1": 1.0, "g2": 2.0, "g3": 3.0, "g4": -5.0})
    pred = pd.Series({"g3": 2.5, "g1": 1.5, "g2": 1.0, "g4": 9.0})  # other order, g4 unused
    genes = ["g1", "g2", "g3"]
    figure = delta_scatter(pred, real, genes, title="A+B")
    (axis,) = figure.axes
    offsets = axis.collections[0].get_offsets()
    np.testing.assert_allclose(offsets, [[1.0, 1.5], [2.0, 1.0], [3.0, 2.5]])
    x_line, y_line = _identity_line(axis).get_data()
    np.testing.assert_allclose(x_line, y_line)
    r = np.corrcoef([1.0, 2.0, 3.0], [1.5, 1.0, 2.5])[0, 1]
    assert axis.get_title() == f"A+B\nPearson r = {r:.3f}"
    assert sorted(text.get_text() for text in axis.texts) == genes


def test_delta_scatter_names_missing_genes():
    real = pd.Series({"g1": 1.0, "g2": 2.0})
    with pytest.raises(FigureDataError, match="pred_delta.*'g2'"):
        delta_scatter(pd.Series({"g1": 1.0}), real, ["g1", "g2"])


def test_delta_scatter_constant_side_gives_nan_pearson():
    real = pd.Series({"g1": 1.0, "g2": 2.0})
    figure = delta_scatter(pd.Series({"g1": 0.0, "g2": 0.0}), real, ["g1", "g2"])
    assert figure.axes[0].get_title() == "Pearson r = nan"


def test_gi_scatter_one_panel_per_score():
    table = pd.DataFrame(
        {
            "condition": ["A+B", "C+D", "E+F"] * 2,
            "score": ["magnitude"] * 3 + ["dominance"] * 3,
            "predicted": [1.0, 2.0, 3.0, 0.1, 0.3, 0.2],
            "real": [1.1, 1.9, 3.2, 0.2, 0.1, 0.3],
        }
    )
    figure = gi_scatter(table)
    assert [axis.get_title().split("\n")[0] for axis in figure.axes] == ["magnitude", "dominance"]
    magnitude = figure.axes[0]
    np.testing.assert_allclose(
        magnitude.collections[0].get_offsets(), [[1.1, 1.0], [1.9, 2.0], [3.2, 3.0]]
    )
    r = np.corrcoef([1.1, 1.9, 3.2], [1.0, 2.0, 3.0])[0, 1]
    assert magnitude.get_title() == f"magnitude\nn = 3, Pearson r = {r:.3f}"
    assert [text.get_text() for text in magnitude.texts] == ["A+B", "C+D", "E+F"]
    x_line, y_line = _identity_line(magnitude).get_data()
    np.testing.assert_allclose(x_line, y_line)


def test_gi_scatter_reports_no_correlation_for_two_doubles():
    table = pd.DataFrame(
        {
            "condition": ["A+B", "C+D"],
            "score": ["m", "m"],
            "predicted": [1.0, 2.0],
            "real": [2.0, 1.0],
        }
    )
    assert gi_scatter(table).axes[0].get_title() == "m\nn = 2, Pearson r = nan"


def test_gi_scatter_requires_its_columns():
    with pytest.raises(FigureDataError, match="real"):
        gi_scatter(pd.DataFrame({"condition": ["A+B"], "score": ["m"], "predicted": [1.0]}))


def test_program_heatmap_means_per_program_in_grc_order():
    programs = pd.DataFrame(
        {
            "gene": ["g1", "g2", "g3", "g4", "g5"],
            "program": [1, 1, 0, 0, 2],
            "order": [0, 1, 2, 3, 4],  # program 1 comes first in GRC order
        }
    )
    deltas = pd.DataFrame(
        [[1.0, 3.0, -1.0, -3.0, 7.0], [0.0, 0.0, 4.0, 2.0, 7.0]],
        index=["A", "A+B"],
        columns=["g1", "g2", "g3", "g4", "g_other"],  # g5 missing → program 2 dropped
    )
    figure = program_heatmap(programs, deltas)
    assert len(figure.axes) == 2  # heatmap + colour bar
    axis = figure.axes[0]
    (image,) = axis.images
    np.testing.assert_allclose(image.get_array(), [[2.0, -2.0], [0.0, 3.0]])
    assert image.norm.vmin == -3.0 and image.norm.vmax == 3.0  # centred at 0
    assert image.get_cmap().name == "RdBu_r"
    # programs named by their most responsive genes (mean |delta|: g2 1.5 > g1 0.5)
    assert [t.get_text() for t in axis.get_xticklabels()] == ["g2, g1", "g3, g4"]
    assert [t.get_text() for t in axis.get_yticklabels()] == ["A", "A+B"]


def test_program_heatmap_without_shared_genes_fails_clearly():
    programs = pd.DataFrame({"gene": ["g1"], "program": [0], "order": [0]})
    with pytest.raises(FigureDataError, match="no gene of the programs table"):
        program_heatmap(programs, pd.DataFrame([[1.0]], columns=["x"]))
