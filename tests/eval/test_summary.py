"""benchmark_summary: fractions of the noise ceiling, and of the gap between the additive
baseline and the ceiling, only where the ceiling bounds the models."""

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
    assert summary["gap_closed"].isna().all()
    assert (summary["ceiling_note"] == "").all()


# -- fraction of the gap between the additive baseline and the ceiling ----------------------------


def _gap_table() -> pd.DataFrame:
    """Subgroup "g", conditions A–D, seeds 1–2. On pearson_delta the ceiling lies 0.2 or 0.4
    above additive; "half" closes half the gap everywhere, "mixed" all of A, none of B, all of C,
    half of D (0.2 + 0 + 0.4 + 0.2 over 0.2 + 0.2 + 0.4 + 0.4 = 2/3). On mse_de20 (lower is better)
    additive 0.5, ceiling 0.1: "half" 0.3, "mixed" 0.2 (0.75) and "worse" 0.6 (-0.25)."""
    additive = {"A": 0.5, "B": 0.3, "C": 0.1, "D": 0.2}
    gap = {"A": 0.2, "B": 0.2, "C": 0.4, "D": 0.4}
    closed = {"half": dict.fromkeys("ABCD", 0.5), "mixed": {"A": 1, "B": 0, "C": 1, "D": 0.5}}
    rows = []
    for seed, shift in ((1, 0.0), (2, 0.05)):
        for condition in "ABCD":
            base = additive[condition] + shift
            values = {"additive": base, "noise_ceiling": base + gap[condition]}
            values |= {m: base + f[condition] * gap[condition] for m, f in closed.items()}
            rows += [(condition, "g", "pearson_delta", v, m, seed) for m, v in values.items()]
            mse = {"additive": 0.5, "noise_ceiling": 0.1, "half": 0.3, "mixed": 0.2, "worse": 0.6}
            rows += [(condition, "g", "mse_de20", v, m, seed) for m, v in mse.items()]
    return pd.DataFrame(rows, columns=list(RESULT_COLUMNS))


def test_gap_closed_known_answers_for_both_directions():
    summary = benchmark_summary(_gap_table())
    assert tuple(summary.columns) == SUMMARY_COLUMNS
    expected = {
        ("half", "pearson_delta"): 0.5,
        ("mixed", "pearson_delta"): 2 / 3,
        ("additive", "pearson_delta"): 0.0,
        ("noise_ceiling", "pearson_delta"): 1.0,
        ("half", "mse_de20"): 0.5,
        ("mixed", "mse_de20"): 0.75,
        ("worse", "mse_de20"): -0.25,  # worse than additive: negative
        ("noise_ceiling", "mse_de20"): 1.0,
    }
    for (model, metric), value in expected.items():
        assert _row(summary, "g", model, metric)["gap_closed"] == pytest.approx(value), model
    assert (summary["ceiling_note"] == "").all()


def test_gap_closed_interval_collapses_when_every_condition_closes_the_same_fraction():
    summary = benchmark_summary(_gap_table())
    for model, metric, value in (("half", "pearson_delta", 0.5), ("mixed", "mse_de20", 0.75)):
        row = _row(summary, "g", model, metric)
        assert row["gap_closed_low"] == pytest.approx(value, abs=1e-12)
        assert row["gap_closed_high"] == pytest.approx(value, abs=1e-12)
    # Fractions 1, 0, 1, 0.5 by condition: a proper interval, within the per-condition range (a
    # ratio of sums lies between the smallest and largest ratio).
    mixed = _row(summary, "g", "mixed", "pearson_delta")
    assert 0.0 <= mixed["gap_closed_low"] < 2 / 3 < mixed["gap_closed_high"] <= 1.0


def test_gap_closed_bootstrap_is_seeded():
    first, again = benchmark_summary(_gap_table()), benchmark_summary(_gap_table())
    pd.testing.assert_frame_equal(first, again)
    mixed = ("g", "mixed", "pearson_delta")
    intervals = set()
    for seed in range(5):  # few resamples, so that the seed shows in the percentiles
        row = _row(benchmark_summary(_gap_table(), n_bootstrap=20, bootstrap_seed=seed), *mixed)
        assert row["gap_closed"] == _row(first, *mixed)["gap_closed"]
        intervals.add((row["gap_closed_low"], row["gap_closed_high"]))
    assert len(intervals) > 1
    assert first.attrs["perturbflow"]["gap_closed_interval"].startswith(
        "95% percentile bootstrap over conditions, 1000 resamples, seed 0"
    )
    with pytest.raises(EvaluationError, match="n_bootstrap"):
        benchmark_summary(_gap_table(), n_bootstrap=0)


def test_gap_closed_pairs_by_condition_and_seed():
    """Seed 2 has a larger additive value; a ceiling scored on seed 1 only pairs with seed 1."""
    rows = [
        ("A", "g", "pearson_delta", 0.0, "additive", 1),
        ("A", "g", "pearson_delta", 1.0, "noise_ceiling", 1),
        ("A", "g", "pearson_delta", 0.5, "m", 1),
        ("A", "g", "pearson_delta", 0.2, "additive", 2),
        ("A", "g", "pearson_delta", 0.6, "noise_ceiling", 2),
        ("A", "g", "pearson_delta", 0.6, "m", 2),
    ]
    table = pd.DataFrame(rows, columns=list(RESULT_COLUMNS))
    # gains 0.5, 0.4 over gaps 1.0, 0.4: mean gain / mean gap.
    assert _row(benchmark_summary(table), "g", "m", "pearson_delta")["gap_closed"] == (
        pytest.approx(0.9 / 1.4)
    )
    seed_one = table.drop(index=4)
    assert _row(benchmark_summary(seed_one), "g", "m", "pearson_delta")["gap_closed"] == (
        pytest.approx(0.5)
    )


def test_gap_closed_is_nan_without_a_reference_a_ceiling_or_a_gap():
    table = _gap_table()
    no_additive = benchmark_summary(table[table["model"] != "additive"])
    no_ceiling = benchmark_summary(table[table["model"] != "noise_ceiling"])
    for summary in (no_additive, no_ceiling):
        for column in ("gap_closed", "gap_closed_low", "gap_closed_high"):
            assert summary[column].isna().all()
    # A ceiling equal to the additive baseline leaves no gap to close (and is not beaten).
    mse = table["metric"] == "mse_de20"
    flat = table[~mse | table["model"].isin(["additive", "noise_ceiling"])].copy()
    flat.loc[mse & (flat["model"] == "noise_ceiling"), "value"] = 0.5
    summary = benchmark_summary(flat)
    for model in ("additive", "noise_ceiling"):
        assert _row(summary, "g", model, "mse_de20")["ceiling_note"] == ""
        assert np.isnan(_row(summary, "g", model, "mse_de20")["gap_closed"])
    assert _row(summary, "g", "half", "pearson_delta")["gap_closed"] == pytest.approx(0.5)


def test_gap_closed_is_nan_where_the_ceiling_is_not_informative():
    summary = benchmark_summary(_results(), sizes=_sizes())
    few = summary[summary["subgroup"] == "few"]
    assert few["gap_closed"].isna().all() and few["gap_closed_low"].isna().all()
    # In "many" (one condition, two seeds shifted alike): (0.45 - 0.7) / (0.9 - 0.7) and
    # (0.6 - 0.5) / (0.1 - 0.5); one condition, so every resample is the same.
    for model, metric, value in (("linear", "pearson_delta", -1.25), ("linear", "mse_de20", -0.25)):
        row = _row(summary, "many", model, metric)
        assert row["gap_closed"] == pytest.approx(value)
        assert row["gap_closed_low"] == pytest.approx(value)
        assert row["gap_closed_high"] == pytest.approx(value)


def test_gap_closed_interval_is_nan_when_a_resample_closes_no_gap():
    """Condition B's ceiling is below additive: a resample of B alone has no gap."""
    rows = []
    for condition, additive, ceiling, model in (("A", 0.2, 1.0, 0.6), ("B", 0.5, 0.4, 0.45)):
        for name, value in (("additive", additive), ("noise_ceiling", ceiling), ("m", model)):
            rows.append((condition, "g", "pearson_delta", value, name, 1))
    summary = benchmark_summary(pd.DataFrame(rows, columns=list(RESULT_COLUMNS)))
    row = _row(summary, "g", "m", "pearson_delta")
    assert row["gap_closed"] == pytest.approx((0.4 - 0.05) / (0.8 - 0.1))
    assert np.isnan(row["gap_closed_low"]) and np.isnan(row["gap_closed_high"])
