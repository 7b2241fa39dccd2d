"""The network map of ``calibrated_additive`` (``network_additive``): how combinations depart
from their summed shift, learned from training combinations across genes."""

from __future__ import annotations

import numpy as np
import pytest
from _planted import N_GENES, low_rank_map, network_screen, planted_doubles

from perturbflow.models import get_model, load_model
from perturbflow.models.baselines.calibrated import (
    AdditiveShiftPrior,
    CalibratedAdditiveConfig,
    NetworkAdditiveConfig,
    NetworkMap,
    fit_network_map,
)


def test_the_map_recovers_a_planted_linear_residual_on_held_out_doubles():
    planted = low_rank_map()
    singles, doubles = planted_doubles(lambda s, rng: s @ planted.T)
    names = sorted(doubles)
    train, test = names[:30], names[30:]
    prior = AdditiveShiftPrior(
        singles, N_GENES, combo_deltas={n: doubles[n] for n in train}, network=True
    )
    assert prior.network is not None and prior.network.penalty is not None
    predicted = prior.shifts(test)  # (T, G)
    truth = np.vstack([doubles[n] for n in test])
    summed = AdditiveShiftPrior(singles, N_GENES).shifts(test)
    error = float(np.mean((predicted - truth) ** 2))
    additive_error = float(np.mean((summed - truth) ** 2))
    assert additive_error > 0.01  # the planted residual is not negligible
    assert error < 0.1 * additive_error
    # Singles are never moved by the map.
    np.testing.assert_array_equal(prior.shifts(["P0"])[0], singles["P0"].astype(np.float32))


def test_a_residual_of_pure_noise_is_not_mapped():
    singles, doubles = planted_doubles(lambda s, rng: rng.normal(0.0, 0.3, N_GENES))
    prior = AdditiveShiftPrior(singles, N_GENES, combo_deltas=doubles, network=True)
    assert prior.network.penalty is None
    plain = AdditiveShiftPrior(singles, N_GENES, combo_deltas=doubles)
    names = sorted(doubles)[:5]
    np.testing.assert_array_equal(prior.shifts(names), plain.shifts(names))


def test_too_few_combinations_give_no_map():
    singles, doubles = planted_doubles(lambda s, rng: s @ low_rank_map().T, n_doubles=2)
    assert fit_network_map(np.ones((2, 4)), np.ones((2, 4))).penalty is None
    prior = AdditiveShiftPrior(singles, N_GENES, combo_deltas=doubles, network=True)
    assert prior.network.penalty is None


def test_dual_form_equals_the_primal_ridge_solution():
    rng = np.random.default_rng(3)
    shifts, residuals = rng.normal(size=(12, 7)), rng.normal(size=(12, 7))
    shifts[:, 0] *= 5.0  # make a penalty worth choosing
    residuals += 0.8 * shifts @ rng.normal(size=(7, 7))
    fitted = fit_network_map(shifts, residuals)
    assert fitted.penalty is not None
    alpha = fitted.penalty * float(np.sum((shifts - shifts.mean(axis=0)) ** 2)) / len(shifts)
    centred = shifts - shifts.mean(axis=0)
    coef = np.linalg.solve(
        centred.T @ centred + alpha * np.eye(7), centred.T @ (residuals - residuals.mean(axis=0))
    )
    new = rng.normal(size=(3, 7))
    expected = residuals.mean(axis=0) + (new - shifts.mean(axis=0)) @ coef
    np.testing.assert_allclose(fitted(new), expected, atol=1e-8)


def test_leave_one_out_error_picks_the_penalty_of_refitting_without_each_double():
    rng = np.random.default_rng(4)
    shifts = rng.normal(size=(10, 6))
    residuals = 0.5 * shifts @ rng.normal(size=(6, 6)) + 0.3 * rng.normal(size=(10, 6))
    fitted = fit_network_map(shifts, residuals)
    n = len(shifts)
    errors = {None: float(np.mean(residuals**2))}
    for penalty in (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0):
        total = 0.0
        for i in range(n):
            keep = np.arange(n) != i
            # The penalty's scale is the full data's, as in the closed form.
            scale = float(np.sum((shifts - shifts.mean(axis=0)) ** 2)) / n
            x, y = shifts[keep], residuals[keep]
            xm, ym = x.mean(axis=0), y.mean(axis=0)
            coef = np.linalg.solve(
                (x - xm).T @ (x - xm) + penalty * scale * np.eye(6), (x - xm).T @ (y - ym)
            )
            total += float(np.sum((residuals[i] - ym - (shifts[i] - xm) @ coef) ** 2))
        errors[penalty] = total / residuals.size
    assert fitted.penalty == min(errors, key=errors.get)


def test_a_map_with_no_penalty_predicts_no_residual():
    empty = NetworkMap(np.zeros(3), np.zeros((0, 3)), np.zeros((0, 3)), np.ones(3), None)
    np.testing.assert_array_equal(empty(np.ones((2, 3))), np.zeros((2, 3)))


@pytest.fixture(scope="module")
def screen():
    return network_screen()


def test_network_additive_beats_calibrated_additive_on_a_planted_screen(screen, tmp_path):
    dataset, deltas, split = screen
    network = get_model("network_additive").fit(dataset, split)
    calibrated = get_model("calibrated_additive").fit(dataset, split)
    truth = np.vstack([deltas[n] for n in split.test])
    error = float(np.mean((network.predict_delta(split.test).to_numpy() - truth) ** 2))
    baseline = float(np.mean((calibrated.predict_delta(split.test).to_numpy() - truth) ** 2))
    assert error < 0.3 * baseline
    # A checkpoint refits the same map from its stored training deltas.
    loaded = load_model(network.save(tmp_path / "network.npz"))
    np.testing.assert_array_equal(
        loaded.predict_delta(split.test).to_numpy(), network.predict_delta(split.test).to_numpy()
    )


def test_a_combination_with_a_gene_without_a_single_is_not_mapped(screen):
    dataset, _, split = screen
    # Single means in both (pooled effects would replace them only where the map is not used).
    network = get_model("network_additive", NetworkAdditiveConfig(combination_weight=0.0))
    network.fit(dataset, split)
    calibrated = get_model("calibrated_additive", CalibratedAdditiveConfig(combination_weight=0.0))
    calibrated.fit(dataset, split)
    # G05 is measured but never perturbed: the map was not fitted on such combinations.
    mixed = ["P0+G05"]
    np.testing.assert_array_equal(
        network.predict_delta(mixed).to_numpy(), calibrated.predict_delta(mixed).to_numpy()
    )


def test_held_out_residuals_equal_refitting_without_each_combination():
    rng = np.random.default_rng(6)
    shifts = rng.normal(size=(9, 5))
    residuals = 0.7 * shifts @ rng.normal(size=(5, 5)) + 0.2 * rng.normal(size=(9, 5))
    fitted = fit_network_map(shifts, residuals)
    assert fitted.penalty is not None
    scale = float(np.sum((shifts - shifts.mean(axis=0)) ** 2)) / len(shifts)
    for i in range(len(shifts)):
        keep = np.arange(len(shifts)) != i
        x, y = shifts[keep], residuals[keep]
        xm, ym = x.mean(axis=0), y.mean(axis=0)
        coef = np.linalg.solve(
            (x - xm).T @ (x - xm) + fitted.penalty * scale * np.eye(5), (x - xm).T @ (y - ym)
        )
        np.testing.assert_allclose(fitted.held_out[i], ym + (shifts[i] - xm) @ coef, atol=1e-8)


def test_cross_fitted_shifts_give_training_combinations_their_held_out_residual():
    planted = low_rank_map()
    singles, doubles = planted_doubles(lambda s, rng: s @ planted.T)
    names = sorted(doubles)
    train = {n: doubles[n] for n in names[:30]}
    prior = AdditiveShiftPrior(singles, N_GENES, combo_deltas=train, network=True)
    summed = AdditiveShiftPrior(singles, N_GENES).shifts(names[:30])
    crossed = prior.shifts(names[:30], cross_fit=True)
    in_sample = prior.shifts(names[:30])
    row = {name: i for i, name in enumerate(sorted(train))}
    for i, name in enumerate(names[:30]):
        np.testing.assert_allclose(
            crossed[i], summed[i] + prior.network.held_out[row[name]], atol=1e-5
        )
    # In sample the map fits its own training combinations closer than held out.
    truth = np.vstack([train[n] for n in names[:30]])
    assert np.mean((in_sample - truth) ** 2) < np.mean((crossed - truth) ** 2)
    # Conditions the map was not fitted on are unchanged by cross-fitting.
    others = names[30:] + ["P0"]
    np.testing.assert_array_equal(prior.shifts(others, cross_fit=True), prior.shifts(others))
