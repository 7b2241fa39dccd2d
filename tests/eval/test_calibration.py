"""Intervals from an ensemble cover what they promise on cases with a known answer."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from perturbflow.eval.calibration import (
    COVERAGE_COLUMNS,
    CalibrationInputError,
    coverage_table,
    ensemble_sd,
    gaussian_interval,
    interval,
    measured_deltas,
    measurement_se,
    quantile_interval,
    sd_scale,
    uncertainty_budget,
)

CONDITIONS = [f"G{i}+G{i + 1}" for i in range(40)]
GENES = [f"g{j}" for j in range(50)]


def _frame(values: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(values, index=CONDITIONS, columns=GENES)


def _exchangeable(n_members: int, spread: float, seed: int = 0):
    """Members and truth drawn independently from N(μ, 1) per entry, members' spread scaled by
    ``spread`` around their own centre: ``spread = 1`` is a perfectly calibrated ensemble."""
    rng = np.random.default_rng(seed)
    centre = rng.normal(size=(len(CONDITIONS), len(GENES)))  # (C, G)
    truth = _frame(centre + rng.normal(size=centre.shape))
    members = [_frame(centre + spread * rng.normal(size=centre.shape)) for _ in range(n_members)]
    return members, truth


def _coverage(table: pd.DataFrame, nominal: float, subgroup: str = "all") -> float:
    row = table[(table["nominal"] == nominal) & (table["subgroup"] == subgroup)]
    return float(row["coverage"].iloc[0])


def test_a_calibrated_gaussian_ensemble_covers_its_nominal_levels():
    members, truth = _exchangeable(n_members=200, spread=1.0)
    table = coverage_table(members, truth, model="m", nominals=(0.5, 0.8, 0.9))
    for nominal in (0.5, 0.8, 0.9):
        assert _coverage(table, nominal) == pytest.approx(nominal, abs=0.03)


def test_a_too_narrow_ensemble_under_covers_by_the_closed_form_amount():
    members, truth = _exchangeable(n_members=200, spread=1 / 3)
    table = coverage_table(members, truth, model="m", nominals=(0.8,))
    # |truth − mean| ~ N(0, 1 + 1/(9·200)); the half-width is z·(1/3)
    expected = 2 * stats.norm.cdf(stats.norm.ppf(0.9) / 3) - 1  # ≈ 0.33
    assert _coverage(table, 0.8) == pytest.approx(expected, abs=0.03)


def test_the_missing_spread_given_as_extra_sd_restores_coverage():
    members, truth = _exchangeable(n_members=200, spread=0.5)
    extra = _frame(np.full((len(CONDITIONS), len(GENES)), np.sqrt(1 - 0.25)))
    table = coverage_table(members, truth, model="m", nominals=(0.8,), extra_sd=[extra])
    assert _coverage(table, 0.8) == pytest.approx(0.8, abs=0.03)


def test_a_scale_fitted_on_validation_entries_recovers_coverage_on_fresh_ones():
    members, truth = _exchangeable(n_members=100, spread=1 / 3, seed=1)
    factor = sd_scale(members, truth, 0.8)
    assert factor == pytest.approx(3.0, rel=0.1)
    fresh_members, fresh_truth = _exchangeable(n_members=100, spread=1 / 3, seed=2)
    table = coverage_table(fresh_members, fresh_truth, model="m", nominals=(0.8,), scale=factor)
    assert _coverage(table, 0.8) == pytest.approx(0.8, abs=0.03)


def test_quantile_intervals_of_five_members_cannot_reach_ninety_percent():
    members, truth = _exchangeable(n_members=5, spread=1.0)
    table = coverage_table(members, truth, model="m", nominals=(0.9,), method="quantile")
    assert _coverage(table, 0.9) < 4 / 6 + 0.03  # (S − 1)/(S + 1) bounds it


def test_quantile_intervals_of_many_members_match_nominal():
    members, truth = _exchangeable(n_members=300, spread=1.0)
    table = coverage_table(members, truth, model="m", nominals=(0.5, 0.9), method="quantile")
    assert _coverage(table, 0.5) == pytest.approx(0.5, abs=0.03)
    assert _coverage(table, 0.9) == pytest.approx(0.9, abs=0.03)


def test_gaussian_interval_by_hand():
    members = [
        pd.DataFrame([[0.0, 1.0]], index=["A"], columns=["x", "y"]),
        pd.DataFrame([[2.0, 1.0]], index=["A"], columns=["x", "y"]),
    ]
    lower, upper = gaussian_interval(members, 0.8)
    z = stats.norm.ppf(0.9)
    sd = np.sqrt(2.0)  # var of (0, 2) with ddof = 1
    np.testing.assert_allclose(lower.to_numpy(), [[1 - z * sd, 1.0]])
    np.testing.assert_allclose(upper.to_numpy(), [[1 + z * sd, 1.0]])
    extra = pd.DataFrame([[0.0, 3.0]], index=["A"], columns=["x", "y"])
    np.testing.assert_allclose(ensemble_sd(members, [extra]).to_numpy(), [[sd, 3.0]])
    q_lower, q_upper = quantile_interval(members, 0.5)
    np.testing.assert_allclose(q_lower.to_numpy(), [[0.5, 1.0]])
    np.testing.assert_allclose(q_upper.to_numpy(), [[1.5, 1.0]])


def test_coverage_table_is_long_with_one_row_per_level_and_subgroup():
    members, truth = _exchangeable(n_members=3, spread=1.0)
    groups = {name: ("first" if i < 10 else "rest") for i, name in enumerate(CONDITIONS)}
    table = coverage_table(
        members, truth, model="m", nominals=(0.5, 0.9), subgroups=groups, label="g+noise"
    )
    assert list(table.columns) == list(COVERAGE_COLUMNS)
    assert len(table) == 2 * 3
    assert set(table["subgroup"]) == {"all", "first", "rest"}
    assert set(table["interval"]) == {"g+noise"}
    first = table[table["subgroup"] == "first"].iloc[0]
    assert (first["n"], first["n_conditions"]) == (10 * len(GENES), 10)
    assert table[table["subgroup"] == "all"]["n"].eq(len(CONDITIONS) * len(GENES)).all()
    widths = table[table["subgroup"] == "all"].set_index("nominal")["mean_width"]
    assert widths[0.9] > widths[0.5] > 0


def test_truth_with_extra_conditions_and_other_order_is_aligned():
    members, truth = _exchangeable(n_members=50, spread=1.0)
    extra = pd.DataFrame(np.zeros((1, len(GENES))), index=["other"], columns=GENES)
    shuffled = pd.concat([truth.iloc[::-1], extra])[GENES[::-1]]
    expected = coverage_table(members, truth, model="m")
    pd.testing.assert_frame_equal(coverage_table(members, shuffled, model="m"), expected)


@pytest.mark.parametrize("nominal", [0.0, 1.0, 1.5, -0.2])
def test_nominal_outside_the_open_unit_interval_is_refused(nominal):
    members, truth = _exchangeable(n_members=3, spread=1.0)
    with pytest.raises(CalibrationInputError, match="strictly between 0 and 1"):
        coverage_table(members, truth, model="m", nominals=(nominal,))


def test_bad_ensembles_and_truth_are_refused_with_what_differs():
    members, truth = _exchangeable(n_members=3, spread=1.0)
    with pytest.raises(CalibrationInputError, match="at least 2 members"):
        coverage_table(members[:1], truth, model="m")
    with pytest.raises(CalibrationInputError, match="member 1 predicts conditions"):
        interval([members[0], members[1].iloc[::-1]], 0.8)
    with pytest.raises(CalibrationInputError, match="member 2 has genes"):
        interval([members[0], members[1], members[2].iloc[:, :5]], 0.8)
    with pytest.raises(CalibrationInputError, match="truth lacks condition"):
        coverage_table(members, truth.iloc[1:], model="m")
    with pytest.raises(CalibrationInputError, match="unknown interval method"):
        interval(members, 0.8, method="bayes")
    with pytest.raises(CalibrationInputError, match="gaussian intervals only"):
        interval(members, 0.8, method="quantile", scale=2.0)


def test_measured_deltas_and_their_standard_error_by_hand():
    import anndata as ad

    from perturbflow.data.io import CONDITION_COLUMN, PerturbationDataset

    labels = ["ctrl"] * 4 + ["A"] * 2 + ["B"] * 3
    x = np.array(
        [[0.0], [2.0], [0.0], [2.0], [3.0], [5.0], [1.0], [2.0], [3.0]], dtype=np.float32
    )  # (9, 1)
    adata = ad.AnnData(
        X=x,
        obs=pd.DataFrame({CONDITION_COLUMN: pd.Categorical(labels)}, index=map(str, range(9))),
        var=pd.DataFrame(index=["g"]),
    )
    dataset = PerturbationDataset(adata=adata, source="hand", condition_key="condition")
    np.testing.assert_allclose(measured_deltas(dataset, ["A", "B"]).to_numpy(), [[3.0], [1.0]])
    se = measurement_se(dataset, ["A", "B"], reference=["ctrl", "A"])
    # within-variance pooled over A only: 2 (ddof 1); control variance 4/3 over 4 cells
    expected = np.sqrt(np.array([[2 / 2], [2 / 3]]) + (4 / 3) / 4)
    np.testing.assert_allclose(se.to_numpy(), expected, rtol=1e-6)


def test_the_uncertainty_budget_separates_error_from_spread():
    members = [
        pd.DataFrame([[1.0, 1.0]], index=["A"], columns=["x", "y"]),
        pd.DataFrame([[3.0, 3.0]], index=["A"], columns=["x", "y"]),
    ]
    truth = pd.DataFrame([[2.0, 5.0]], index=["A"], columns=["x", "y"])  # errors 0 and 3
    noise = pd.DataFrame([[1.0, 7.0]], index=["A"], columns=["x", "y"])
    budget = uncertainty_budget(members, truth, model="m", extra_sd={"noise": noise})
    values = budget.set_index("term")["rms"]
    assert values["error"] == pytest.approx(np.sqrt(9 / 2))
    assert values["member_sd"] == pytest.approx(np.sqrt(2.0))
    assert values["noise"] == pytest.approx(5.0)
    assert list(budget.columns) == ["model", "term", "rms"]
