"""benchmark_summary: fractions of the noise ceiling only where the ceiling bounds the models."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from perturbflow.eval.evaluate import RESULT_COLUMNS, EvaluationError
from perturbflow.eval.summary import SUMMARY_COLUMNS, benchmark_summary

# (subgroup, condition) → real cells; every condition has 30 genes.
CELLS = {("few", "A"): 8, ("few", "B"): 12, ("few", "C"): 20, ("many", "D"): 200}


def _results() -> pd.DataFrame:
    """Two seeds; in subgroup "few" additive beats the ceiling on pearson_delta (0.8 vs 0.6) and
    mse_de20 (0.2 vs 0.3); in "many" the ceiling bounds both models on both metrics."""
    means = {
        ("few", "pearson_delta"): {"additive": 0.8, "linear": 0.5, "noise_ceiling": 0.6},
        ("few", "mse_de20"): {"additive": 0.2, "linear": 0.4, "noise_ceiling": 0.3},
        ("many", "pearson_delta"): {"additive": 0.7, "linear": 0.45, "noise_ceiling": 0.9},
        ("many", "mse_de20"): {"additive": 0.5, "linear": 0.6, "noise_ceiling": 0.1},
    }
    rows = []
    for subgroup, condition in CELLS:
        for (group, metric), values in means.items():
            if group != subgroup:
                continue
            for model, value in values.items():
                for seed, shift in ((1, -0.01), (2, 0.01)):
                    rows.append((condition, subgroup, metric, value + shift, model, seed))
    return pd.DataFrame(rows, columns=list(RESULT_COLUMNS))


def _sizes() -> pd.DataFrame:
    return pd.DataFrame(
        [(condition, n, 30) for (_, condition), n in CELLS.items()],
        columns=["condition", "n_cells", "n_genes"],
    )


def _row(summary: pd.DataFrame, subgroup: str, model: str, metric: str) -> pd.Series:
    return summary.set_index(["subgroup", "model", "metric"]).loc[(subgroup, model, metric)]


def test_beaten_ceiling_gives_no_fraction_and_a_note_with_the_counts():
    summary = benchmark_summary(_results(), sizes=_sizes())
    assert tuple(summary.columns) == SUMMARY_COLUMNS
    for metric in ("pearson_delta", "mse_de20"):
        for model in ("additive", "linear", "noise_ceiling"):
            row = _row(summary, "few", model, metric)
            assert np.isnan(row["fraction_of_ceiling"]), (model, metric)
            assert row["ceiling_note"] == (
                "ceiling not informative here (8–20 (median 12) cells per condition, 30 genes): "
                "additive beats it"
            )
    # Every other column is still reported for the flagged groups.
    additive = _row(summary, "few", "additive", "pearson_delta")
    assert additive["mean"] == pytest.approx(0.8)
    assert additive["n_seeds"] == 2 and additive["n_conditions"] == 3
    assert additive["win_rate_vs_additive"] == 0.5


def test_an_informative_ceiling_keeps_its_fractions():
    summary = benchmark_summary(_results(), sizes=_sizes())
    many = summary[summary["subgroup"] == "many"].set_index(["model", "metric"])
    assert (many["ceiling_note"] == "").all()
    assert many.loc[("additive", "pearson_delta"), "fraction_of_ceiling"] == pytest.approx(
        0.7 / 0.9
    )
    assert many.loc[("linear", "mse_de20"), "fraction_of_ceiling"] == pytest.approx(0.1 / 0.6)
    assert many.loc[("noise_ceiling", "mse_de20"), "fraction_of_ceiling"] == pytest.approx(1.0)
    fractions = summary["fraction_of_ceiling"].dropna()
    assert (fractions <= 1.0 + 1e-12).all()


def test_without_sizes_the_note_says_counts_are_missing():
    summary = benchmark_summary(_results())
    note = _row(summary, "few", "linear", "mse_de20")["ceiling_note"]
    assert note == (
        "ceiling not informative here (cell and gene counts not given): additive beats it"
    )


def test_several_models_beating_the_ceiling_are_named():
    results = _results()
    linear = (results["model"] == "linear") & (results["subgroup"] == "few")
    results.loc[linear & (results["metric"] == "pearson_delta"), "value"] += 0.2  # 0.7 > 0.6
    summary = benchmark_summary(results, sizes=_sizes())
    note = _row(summary, "few", "linear", "pearson_delta")["ceiling_note"]
    assert note.endswith("additive, linear beat it")


def test_a_ceiling_that_is_not_positive_bounds_nothing():
    results = _results()
    many = (results["subgroup"] == "many") & (results["metric"] == "pearson_delta")
    results.loc[many, "value"] -= 1.0  # ceiling -0.1, additive -0.3, linear -0.55
    summary = benchmark_summary(results, sizes=_sizes())
    row = _row(summary, "many", "linear", "pearson_delta")
    assert np.isnan(row["fraction_of_ceiling"])  # -0.55 / -0.1 would read 5.5
    assert row["ceiling_note"] == (
        "ceiling not informative here (200 cells per condition, 30 genes): "
        "the ceiling is not positive"
    )


def test_sizes_repeated_per_seed_are_counted_once():
    sizes = pd.concat([_sizes(), _sizes()], ignore_index=True)
    summary = benchmark_summary(_results(), sizes=sizes)
    assert "8–20 (median 12) cells" in _row(summary, "few", "additive", "mse_de20")["ceiling_note"]


def test_sizes_without_their_columns_are_refused():
    with pytest.raises(EvaluationError, match="n_cells"):
        benchmark_summary(_results(), sizes=_sizes().drop(columns="n_cells"))


def test_no_ceiling_rows_no_fractions_no_notes():
    results = _results()
    summary = benchmark_summary(results[results["model"] != "noise_ceiling"])
    assert summary["fraction_of_ceiling"].isna().all()
    assert (summary["ceiling_note"] == "").all()
