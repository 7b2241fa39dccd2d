"""Metrics: reference cases, best values, direction, and invariances (hypothesis)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perturbflow.eval.metrics import (
    METRICS,
    MetricSpec,
    UnknownMetricError,
    direction_acc_de20,
    discrimination_l1,
    energy_distance,
    get_metric,
    mse_de20,
    pearson,
    pearson_delta,
    pearson_delta_de20,
    pearson_systema,
    pearson_systema_de20,
)
from perturbflow.eval.overlap import DETable

SETTINGS = settings(max_examples=40, deadline=None)
seeds = st.integers(min_value=0, max_value=2**32 - 1)


def _means(rng: np.random.Generator, n_conditions: int, n_genes: int):
    """Control mean ``(G,)``, true means ``(C, G)`` with distinct effects, DE indices ``(5,)``."""
    ctrl = rng.uniform(1.0, 3.0, n_genes)  # (G,)
    true = ctrl + rng.normal(0.0, 1.0, (n_conditions, n_genes))  # (C, G)
    de_idx = rng.choice(n_genes, size=min(5, n_genes), replace=False)
    return ctrl, true, de_idx


def _mean_metric(spec: MetricSpec, pred, true, ctrl, de_idx) -> float:
    return spec.fn(pred, true, ctrl, de_idx)


# -- registry --------------------------------------------------------------------------------


def test_registry_lists_the_method_metrics_with_best_values():
    assert list(METRICS) == [
        "pearson_delta",
        "pearson_delta_de20",
        "pearson_systema",
        "pearson_systema_de20",
        "mse_de20",
        "direction_acc_de20",
        "discrimination_l1",
        "energy_distance",
        "energy_distance_genes",
        "overlap_at_20",
        "overlap_at_50",
        "overlap_at_100",
        "overlap_at_N",
    ]
    assert {name: (m.best, m.higher_is_better, m.kind) for name, m in METRICS.items()} == {
        "pearson_delta": (1.0, True, "mean"),
        "pearson_delta_de20": (1.0, True, "mean"),
        "pearson_systema": (1.0, True, "reference"),
        "pearson_systema_de20": (1.0, True, "reference"),
        "mse_de20": (0.0, False, "mean"),
        "direction_acc_de20": (1.0, True, "mean"),
        "discrimination_l1": (1.0, True, "set"),
        "energy_distance": (0.0, False, "cells"),
        "energy_distance_genes": (0.0, False, "gene_cells"),
        "overlap_at_20": (1.0, True, "de_overlap"),
        "overlap_at_50": (1.0, True, "de_overlap"),
        "overlap_at_100": (1.0, True, "de_overlap"),
        "overlap_at_N": (1.0, True, "de_overlap"),
    }
    # The costly DE overlap is computed only when asked.
    assert [name for name, m in METRICS.items() if not m.by_default] == [
        "overlap_at_20",
        "overlap_at_50",
        "overlap_at_100",
        "overlap_at_N",
    ]
    assert all(spec.name == name and spec.description for name, spec in METRICS.items())
    # The registry says in which space each energy distance is measured.
    assert (
        "Euclidean, PCA space (50 PCs of control cells)" in METRICS["energy_distance"].description
    )
    assert "Euclidean, all genes" in METRICS["energy_distance_genes"].description


def test_get_metric_error_lists_registered_names():
    assert get_metric("mse_de20") is METRICS["mse_de20"]
    with pytest.raises(KeyError) as info:
        get_metric("pearson")
    assert isinstance(info.value, UnknownMetricError)
    message = str(info.value)
    assert "'pearson'" in message
    assert all(name in message for name in METRICS)


# -- best values and direction ------------------------------------------------------------------


@SETTINGS
@given(seed=seeds, n_conditions=st.integers(2, 6), n_genes=st.integers(6, 40))
def test_perfect_prediction_scores_best_value_of_every_metric(seed, n_conditions, n_genes):
    rng = np.random.default_rng(seed)
    ctrl, true, de_idx = _means(rng, n_conditions, n_genes)
    for spec in METRICS.values():
        if spec.kind in ("mean", "reference"):  # ctrl stands in for the Systema reference
            for i in range(n_conditions):
                value = _mean_metric(spec, true[i].copy(), true[i], ctrl, de_idx)
                assert value == pytest.approx(spec.best, abs=1e-12), spec.name
        elif spec.kind == "set":
            np.testing.assert_array_equal(spec.fn(true.copy(), true, None), spec.best)
        elif spec.kind == "de_overlap":  # every gene significant, ranked by the true change
            names = tuple(f"c{i}" for i in range(n_conditions))
            genes = pd.Index([f"g{j}" for j in range(n_genes)])
            fdr = np.full(true.shape, 1e-3)
            table = DETable(names, genes, true - ctrl, fdr, fdr, backend="scipy")
            np.testing.assert_array_equal(spec.fn(table, table), spec.best)
        else:
            cells = rng.normal(size=(7, 3))
            assert spec.fn(cells.copy(), cells) == spec.best


def test_shuffled_predictions_score_worse():
    rng = np.random.default_rng(0)
    ctrl, true, de_idx = _means(rng, n_conditions=6, n_genes=50)
    shuffled = np.roll(true, 1, axis=0)  # every condition gets another's profile
    for i in range(len(true)):
        assert pearson_delta(true[i], true[i], ctrl) > pearson_delta(shuffled[i], true[i], ctrl)
        assert pearson_delta_de20(true[i], true[i], ctrl, de_idx) > pearson_delta_de20(
            shuffled[i], true[i], ctrl, de_idx
        )
        assert mse_de20(true[i], true[i], de_idx) < mse_de20(shuffled[i], true[i], de_idx)
    assert discrimination_l1(shuffled, true).mean() < discrimination_l1(true, true).mean()


# -- invariances ------------------------------------------------------------------------------


@SETTINGS
@given(seed=seeds, n_genes=st.integers(6, 40))
def test_mean_metrics_invariant_to_consistent_gene_permutation(seed, n_genes):
    rng = np.random.default_rng(seed)
    ctrl, true, de_idx = _means(rng, 3, n_genes)
    pred = true + rng.normal(0.0, 0.7, true.shape)  # (C, G)
    perm = rng.permutation(n_genes)  # new position p holds old gene perm[p]
    inverse = np.argsort(perm)
    for spec in METRICS.values():
        if spec.kind in ("mean", "reference"):
            before = _mean_metric(spec, pred[0], true[0], ctrl, de_idx)
            after = _mean_metric(spec, pred[0, perm], true[0, perm], ctrl[perm], inverse[de_idx])
            assert after == pytest.approx(before, rel=1e-9, abs=1e-12), spec.name
    np.testing.assert_allclose(
        discrimination_l1(pred[:, perm], true[:, perm]), discrimination_l1(pred, true)
    )


@SETTINGS
@given(seed=seeds, n_conditions=st.integers(2, 8))
def test_discrimination_is_equivariant_to_condition_order(seed, n_conditions):
    rng = np.random.default_rng(seed)
    _, true, _ = _means(rng, n_conditions, 12)
    pred = true + rng.normal(0.0, 1.0, true.shape)
    exclude = rng.random(true.shape) < 0.2
    perm = rng.permutation(n_conditions)
    scores = discrimination_l1(pred, true, exclude)
    np.testing.assert_array_equal(
        discrimination_l1(pred[perm], true[perm], exclude[perm]), scores[perm]
    )
    assert np.all((scores >= 0) & (scores <= 1))


# -- reference cases ------------------------------------------------------------------------------


def test_discrimination_known_small_case():
    true = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    pred = np.array(
        [
            [0.0, 0.0],  # closest to its own condition: rank 0
            [1.0, 9.0],  # distances 10, 18, 2: its match is farthest, rank 2
            [0.0, 6.0],  # distances 6, 16, 4: rank 0
        ]
    )
    np.testing.assert_array_equal(discrimination_l1(pred, true), [1.0, 0.0, 1.0])


def test_discrimination_counts_ties_against_the_prediction():
    true = np.array([[0.0, 0.0], [10.0, 0.0]])
    midway = np.array([[5.0, 0.0], [5.0, 0.0]])
    np.testing.assert_array_equal(discrimination_l1(midway, true), [0.0, 0.0])
    # identical real profiles cannot be told apart, even by a perfect prediction
    same = np.array([[1.0, 2.0], [1.0, 2.0], [7.0, 7.0]])
    np.testing.assert_array_equal(discrimination_l1(same, same), [0.5, 0.5, 1.0])


def test_discrimination_excluded_genes_are_ignored():
    true = np.array([[0.0, 0.0], [0.0, 10.0]])
    # condition 0's prediction matches condition 1: wrong
    pred = np.array([[0.0, 10.0], [0.0, 10.0]])
    np.testing.assert_array_equal(discrimination_l1(pred, true), [0.0, 1.0])
    exclude = np.array([[False, True], [False, False]])  # gene 0 only: 0 vs 0, a tie
    np.testing.assert_array_equal(discrimination_l1(pred, true, exclude), [0.0, 1.0])
    exclude = np.array([[True, False], [False, False]])  # gene 1 only: 10 vs 0, wrong
    np.testing.assert_array_equal(discrimination_l1(pred, true, exclude), [0.0, 1.0])
    pred = np.array([[5.0, 0.0], [0.0, 10.0]])  # all genes: 5 vs 15, right
    np.testing.assert_array_equal(discrimination_l1(pred, true), [1.0, 1.0])
    exclude = np.array([[False, True], [False, False]])  # gene 0 only: 5 vs 5, a tie
    np.testing.assert_array_equal(discrimination_l1(pred, true, exclude), [0.0, 1.0])


def test_discrimination_single_condition_is_undefined():
    assert np.isnan(discrimination_l1(np.ones((1, 3)), np.ones((1, 3)))).all()


def test_direction_accuracy_known_case():
    ctrl = np.zeros(5)
    true = np.array([1.0, -1.0, 2.0, -2.0, 0.0])
    pred = np.array([0.5, 0.3, 3.0, -0.1, 0.0])  # signs right on genes 0, 2, 3, 4
    assert direction_acc_de20(pred, true, ctrl, np.arange(5)) == pytest.approx(0.8)
    assert direction_acc_de20(pred, true, ctrl, np.array([1])) == 0.0
    assert np.isnan(direction_acc_de20(pred, true, ctrl, np.array([], dtype=int)))


def test_mse_and_pearson_on_de_genes_use_only_those_genes():
    ctrl = np.zeros(4)
    true = np.array([1.0, 2.0, 3.0, 100.0])
    pred = np.array([2.0, 4.0, 6.0, -100.0])  # perfectly correlated on genes 0-2 only
    de_idx = np.array([0, 1, 2])
    assert pearson_delta_de20(pred, true, ctrl, de_idx) == pytest.approx(1.0)
    assert mse_de20(pred, true, de_idx) == pytest.approx((1 + 4 + 9) / 3)
    assert pearson_delta(pred, true, ctrl) < 0


def test_pearson_of_constant_vector_is_nan_without_warnings():
    ctrl = np.full(10, 0.1)
    true = np.linspace(0, 1, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(pearson(np.full(10, 0.1), true))
        assert np.isnan(pearson_delta(ctrl.copy(), true, ctrl))  # "no change" model
        assert np.isnan(pearson(np.array([1.0]), np.array([2.0])))


@SETTINGS
@given(
    x=st.lists(st.integers(-1000, 1000), min_size=2, max_size=30),
    shift=st.floats(-10, 10),
    scale=st.floats(0.1, 10),
)
def test_pearson_is_bounded_and_affine_invariant(x, shift, scale):
    x = np.array(x, dtype=float) / 10
    y = x[::-1].copy()
    r = pearson(x, y)
    if np.isnan(r):
        assert np.all(x == x[0])
        return
    assert -1.0 <= r <= 1.0
    assert pearson(x * scale + shift, y) == pytest.approx(r, abs=1e-6)


def test_mismatched_shapes_raise():
    with pytest.raises(ValueError, match="same length"):
        pearson_delta(np.ones(3), np.ones(4), np.ones(3))
    with pytest.raises(ValueError, match="same length"):
        pearson_systema(np.ones(3), np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="outside"):
        mse_de20(np.ones(3), np.ones(3), np.array([3]))
    with pytest.raises(ValueError, match="same features"):
        energy_distance(np.ones((2, 3)), np.ones((2, 4)))


# -- Systema: change from the mean of the training perturbations --------------------------------


def test_pearson_systema_hand_computed_case():
    reference = np.array([2.0, 1.0, 0.5, 3.0])
    true = reference + np.array([1.0, 2.0, 3.0, 4.0])
    # Deviations [1, 3, 2, 4] vs [1, 2, 3, 4]: centred [-1.5, .5, -.5, 1.5] vs
    # [-1.5, -.5, .5, 1.5], dot 4 over norms 5 → 0.8.
    pred = reference + np.array([1.0, 3.0, 2.0, 4.0])
    assert pearson_systema(pred, true, reference) == pytest.approx(0.8)
    assert pearson_systema(reference + 2.0 * (true - reference), true, reference) == 1.0
    assert pearson_systema(reference - (true - reference), true, reference) == -1.0
    # pearson_delta with the reference in place of control; another reference, another score.
    assert pearson_systema(pred, true, reference) == pearson_delta(pred, true, reference)
    assert pearson_delta(pred, true, np.zeros(4)) == pytest.approx(
        pearson(np.array([3.0, 4.0, 2.5, 7.0]), np.array([3.0, 3.0, 3.5, 7.0]))
    )
    # Only the DE genes enter the DE version: on genes 0, 2, 3 deviations [1, 2, 4] agree.
    assert pearson_systema_de20(pred, true, reference, np.array([0, 2, 3])) == pytest.approx(
        pearson(np.array([1.0, 2.0, 4.0]), np.array([1.0, 3.0, 4.0]))
    )
    assert pearson_systema_de20(pred, true, reference, np.array([0, 3])) == 1.0
    # Predicting the reference itself is no change at all: undefined, like a constant prediction.
    assert np.isnan(pearson_systema(reference.copy(), true, reference))
    assert np.isnan(pearson_systema_de20(reference.copy(), true, reference, np.arange(4)))


def test_the_average_perturbation_response_scores_high_from_control_and_zero_from_systema():
    """Every perturbation shares a large response; the specific part is independent per
    condition. Predicting the average response (estimated from other perturbations than the
    reference's) reaches a high control-referenced Pearson and nothing on Systema's.

    "Nothing" up to the reference's own estimation noise, which prediction and truth both carry
    relative to it: their correlation is about ``1 / sqrt(2 n_train)`` (0.11 with 40 training
    perturbations), here 0.03."""
    rng = np.random.default_rng(7)
    n_genes = 2000
    ctrl = rng.uniform(0.5, 3.0, n_genes)  # (G,)
    shared = rng.normal(0.0, 1.0, n_genes)  # (G,) response common to every perturbation

    def perturbations(n: int) -> np.ndarray:
        return ctrl + shared + rng.normal(0.0, 0.5, (n, n_genes))  # (n, G)

    training, others, test = perturbations(500), perturbations(500), perturbations(5)
    reference = training.mean(axis=0)  # (G,) mean of the training pseudobulks
    average_response = others.mean(axis=0)  # (G,)
    systema, delta = [], []
    for true in test:
        systema.append(pearson_systema(average_response, true, reference))
        delta.append(pearson_delta(average_response, true, ctrl))
        # A model that knows the specific effect scores high on both.
        specific = true + rng.normal(0.0, 0.1, n_genes)
        assert pearson_systema(specific, true, reference) > 0.9
        assert pearson_delta(specific, true, ctrl) > 0.9
    assert np.all(np.abs(systema) < 0.1), systema  # chance level: |r| ~ 1 / sqrt(2000)
    assert np.all(np.array(delta) > 0.85), delta  # 1 / sqrt(1 + 0.25) ≈ 0.89


# -- energy distance ---------------------------------------------------------------------------


def test_energy_distance_hand_computed_case():
    # 1-D: X = {0, 2}, Y = {1}. E|X-Y| = 1, E|X-X'| = (0 + 2 + 2 + 0) / 4 = 1, E|Y-Y'| = 0.
    assert energy_distance(np.array([[0.0], [2.0]]), np.array([[1.0]])) == pytest.approx(1.0)
    # Two points: 2 * 3 - 0 - 0.
    assert energy_distance(np.array([[0.0, 0.0]]), np.array([[3.0, 4.0]])) == pytest.approx(10.0)


@SETTINGS
@given(seed=seeds, n=st.integers(1, 30), d=st.integers(1, 6))
def test_energy_distance_zero_for_identical_sets_and_symmetric(seed, n, d):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = rng.normal(size=(n + 3, d))
    assert energy_distance(x, x.copy()) == 0.0
    assert energy_distance(x, x[rng.permutation(n)]) == pytest.approx(0.0, abs=1e-12)
    assert energy_distance(x, y) == pytest.approx(energy_distance(y, x))
    assert energy_distance(x, y) >= 0.0


def test_energy_distance_grows_with_a_shift():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 5))
    same = rng.normal(size=(200, 5))
    shifted = rng.normal(size=(200, 5)) + np.array([2.0, 0, 0, 0, 0])
    near, far = energy_distance(x, same), energy_distance(x, shifted)
    assert far > 0.5
    assert near < 0.1 < far
    assert energy_distance(x, shifted + np.array([2.0, 0, 0, 0, 0])) > far


def test_energy_distance_of_gaussian_samples_matches_the_closed_form():
    """1-D N(0, 1) vs N(1, 1): ``2 E|X - Y| - E|X - X'| - E|Y - Y'|`` with ``X - Y ~ N(-1, 2)``,
    ``E|Z| = s sqrt(2/pi) exp(-m^2 / 2s^2) + m (1 - 2 Phi(-m/s))`` for ``Z ~ N(m, s^2)``; the
    V-statistic adds ``E|X - X'| (1/n + 1/m)``. Averaged over 50 pairs of samples (sd of the mean
    about 0.011)."""
    from scipy.stats import norm

    rng = np.random.default_rng(3)
    n = 400
    sd = np.sqrt(2.0)
    between = sd * np.sqrt(2 / np.pi) * np.exp(-1 / (2 * sd**2)) + (1 - 2 * norm.cdf(-1 / sd))
    within = 2 / np.sqrt(np.pi)  # E|X - X'| for unit variance
    expected = 2 * between - 2 * within + within * 2 / n
    assert expected == pytest.approx(0.5474, abs=1e-3)
    values = [
        energy_distance(rng.normal(0.0, 1.0, (n, 1)), rng.normal(1.0, 1.0, (n, 1)))
        for _ in range(50)
    ]
    assert np.mean(values) == pytest.approx(expected, abs=0.035)
    # The same shift in every one of 10 independent genes moves the samples √10 apart: larger.
    x10, y10 = rng.normal(0.0, 1.0, (n, 10)), rng.normal(1.0, 1.0, (n, 10))
    assert energy_distance(x10, y10) > 2 * expected


def test_a_change_within_float32_rounding_counts_as_no_change():
    rng = np.random.default_rng(0)
    ctrl = rng.uniform(0.0, 5.0, 300)
    cells = rng.normal(ctrl, 1.0, size=(50, 300)).astype(np.float32)
    # control cells moved onto the control mean, stored as float32: no change up to rounding
    recentred = (cells - cells.mean(axis=0) + ctrl).astype(np.float32)
    pred = recentred.mean(axis=0, dtype=np.float64)
    assert 0 < np.abs(pred - ctrl).max() < 1e-5  # rounding noise, not zero
    true = ctrl + rng.normal(0.0, 1.0, 300)
    assert np.isnan(pearson_delta(pred, true, ctrl))
    assert np.isnan(pearson_delta_de20(pred, true, ctrl, np.arange(20)))
    # a real change of 1e-3 is kept
    shifted = pred + 1e-3 * (true - ctrl)
    assert pearson_delta(shifted, true, ctrl) == pytest.approx(1.0, abs=1e-3)
