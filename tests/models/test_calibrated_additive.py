"""calibrated_additive: per-gene shifts, calibrated scales, the unseen-gene fallbacks and the
model behind the one interface (scbig's starting point)."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from perturbflow.models import get_model, load_model
from perturbflow.models.baselines.calibrated import (
    AdditiveShiftPrior,
    CalibratedAdditiveConfig,
    NetworkAdditiveConfig,
    coupling_columns,
    loo_ridge_alpha,
)


def _singles(features: np.ndarray, coef: np.ndarray, noise: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    deltas = features @ coef + noise * rng.normal(size=(len(features), coef.shape[1]))
    genes = [f"S{i}" for i in range(len(features))]
    return genes, {g: d for g, d in zip(genes, deltas, strict=True)}


def test_loo_alpha_is_small_for_an_informative_prior_and_infinite_for_noise():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(30, 4))
    coef = rng.normal(size=(4, 50))
    informative = features @ coef
    centred = features - features.mean(axis=0)
    assert loo_ridge_alpha(centred, informative - informative.mean(axis=0)) <= 1.0
    noise = rng.normal(size=(30, 50))
    assert loo_ridge_alpha(centred, noise - noise.mean(axis=0)) == float("inf")
    assert loo_ridge_alpha(centred[:2], noise[:2]) == float("inf")  # too few singles


def test_loo_residuals_match_refitting_without_each_gene():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(8, 3))
    y = rng.normal(size=(8, 5))
    x, y = x - x.mean(axis=0), y - y.mean(axis=0)
    alpha = 1.0
    hat = x @ np.linalg.solve(x.T @ x + alpha * np.eye(3), x.T)
    shortcut = (y - hat @ y) / (1 - np.diag(hat) - 1 / 8)[:, None]
    for i in range(8):
        keep = np.arange(8) != i
        xm, ym = x[keep].mean(axis=0), y[keep].mean(axis=0)
        xs, ys = x[keep] - xm, y[keep] - ym
        coef = np.linalg.solve(xs.T @ xs + alpha * np.eye(3), xs.T @ ys)
        np.testing.assert_allclose(y[i] - (ym + (x[i] - xm) @ coef), shortcut[i], atol=1e-10)


def test_unseen_gene_gets_the_ridge_prediction_or_the_mean():
    rng = np.random.default_rng(3)
    features = rng.normal(size=(25, 3))
    coef = rng.normal(size=(3, 10))
    genes, deltas = _singles(features, coef, noise=0.01)
    new = np.array([1.0, -1.0, 0.5])
    prior = pd.DataFrame(np.vstack([features, new]), index=[*genes, "NEW"])
    model = AdditiveShiftPrior(deltas, 10, prior, unseen="ridge")
    assert np.isfinite(model.alpha) and model.alpha <= 1.0
    np.testing.assert_allclose(model.gene_delta("NEW"), new @ coef, atol=0.02)
    mean = np.mean(list(deltas.values()), axis=0)
    mean_only = AdditiveShiftPrior(deltas, 10, prior, unseen="mean")
    np.testing.assert_allclose(mean_only.gene_delta("NEW"), mean, rtol=1e-5)
    np.testing.assert_allclose(model.gene_delta("S0"), deltas["S0"], rtol=1e-5)
    # A prior unrelated to the deltas is shrunk away: the unseen gene gets the mean delta.
    noise_prior = pd.DataFrame(rng.normal(size=(26, 3)), index=[*genes, "NEW"])
    _, noisy = _singles(features, np.zeros((3, 10)), noise=1.0, seed=4)
    shrunk = AdditiveShiftPrior(noisy, 10, noise_prior, unseen="ridge")
    loose = AdditiveShiftPrior(noisy, 10, noise_prior, unseen="ridge", alpha=0.01)
    noisy_mean = np.mean(list(noisy.values()), axis=0)
    assert shrunk.alpha >= 100
    assert (
        np.abs(shrunk.gene_delta("NEW") - noisy_mean).max()
        < 0.3 * np.abs(loose.gene_delta("NEW") - noisy_mean).max()
    )


def _screen(n_singles: int = 12, n_genes: int = 30, seed: int = 5):
    rng = np.random.default_rng(seed)
    genes = [f"S{i}" for i in range(n_singles)]
    deltas = {g: rng.normal(size=n_genes) for g in genes}
    return rng, genes, deltas


def test_hidden_seen_gene_gets_the_fallback_fitted_without_it():
    rng, genes, deltas = _screen()
    mean_model = AdditiveShiftPrior(deltas, 30, unseen="mean")
    others = np.mean([deltas[g] for g in genes[1:]], axis=0)
    np.testing.assert_allclose(mean_model.gene_delta("S0", hidden=True), others, rtol=1e-5)
    np.testing.assert_allclose(mean_model.gene_delta("S0"), deltas["S0"], rtol=1e-6)
    prior = pd.DataFrame(rng.normal(size=(12, 3)), index=genes)
    ridge = AdditiveShiftPrior(deltas, 30, prior, unseen="ridge", alpha=1.0)
    for gene in ("S0", "S7"):
        without = {g: d for g, d in deltas.items() if g != gene}
        refit = AdditiveShiftPrior(without, 30, prior, unseen="ridge", alpha=1.0)
        np.testing.assert_allclose(
            ridge.gene_delta(gene, hidden=True), refit.gene_delta(gene), atol=1e-4
        )


def test_calibration_recovers_a_planted_combination_scale():
    rng, genes, deltas = _screen()
    pairs = [(genes[i], genes[j]) for i, j in [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9), (1, 5)]]
    combos = {
        f"{a}+{b}": 0.5 * (deltas[a] + deltas[b]) + 0.01 * rng.normal(size=30) for a, b in pairs
    }
    model = AdditiveShiftPrior(deltas, 30, combo_deltas=combos, calibrate=True)
    assert abs(model.scales[(2, 0)] - 0.5) < 0.02
    np.testing.assert_allclose(
        model.shifts(["S10+S11"])[0],
        model.scales[(2, 0)] * (deltas["S10"] + deltas["S11"]),
        rtol=1e-5,
    )
    # Categories with hidden genes are fitted too; an unseen pair uses the (2, 2) scale.
    assert {(1, 1), (2, 1), (2, 2)} <= set(model.scales)
    assert all(0.0 <= v <= 2.0 for v in model.scales.values())
    np.testing.assert_allclose(
        model.shifts(["X+Y"])[0], model.scales[(2, 2)] * 2 * model.mean_delta, rtol=1e-5
    )
    # A seen single keeps its own delta exactly; off, the shift is the plain sum.
    np.testing.assert_allclose(model.shifts(["S3"])[0], deltas["S3"], rtol=1e-6)
    plain = AdditiveShiftPrior(deltas, 30, combo_deltas=combos, calibrate=False)
    assert plain.scales == {}
    np.testing.assert_allclose(plain.shifts(["S0+S1"])[0], deltas["S0"] + deltas["S1"], rtol=1e-5)


def test_calibration_needs_enough_conditions():
    _, genes, deltas = _screen()
    combos = {"S0+S1": 0.3 * (deltas["S0"] + deltas["S1"]), "S2+S3": deltas["S2"]}
    model = AdditiveShiftPrior(deltas, 30, combo_deltas=combos, calibrate=True)
    assert (2, 0) not in model.scales  # two combinations are too few: plain sum
    assert model.scale(2, 0) == 1.0
    pairs = {
        f"S{i}+S{i + 1}": 1.5 * (deltas[f"S{i}"] + deltas[f"S{i + 1}"]) for i in range(0, 8, 2)
    }
    fitted = AdditiveShiftPrior(deltas, 30, combo_deltas=pairs, calibrate=True)
    assert abs(fitted.scales[(2, 0)] - 1.5) < 1e-6
    np.testing.assert_allclose(
        fitted.shifts(["S0+S9"])[0], 1.5 * (deltas["S0"] + deltas["S9"]), rtol=1e-5
    )


def _sparse_screen(noise: float, seed: int = 3):
    """Singles that change 5 of 200 genes, measured with noise on every gene; doubles are the
    exact sum of the singles' true changes, measured with noise of their own."""
    rng = np.random.default_rng(seed)
    n_genes, genes = 200, [f"S{i}" for i in range(12)]
    true = {}
    for g in genes:
        change = np.zeros(n_genes)
        change[rng.choice(n_genes, 5, replace=False)] = rng.choice([-2.0, 2.0], 5)
        true[g] = change
    measured = {g: true[g] + noise * rng.normal(size=n_genes) for g in genes}
    pairs = [(genes[i], genes[i + 1]) for i in range(0, 12, 2)]
    combos = {f"{a}+{b}": true[a] + true[b] + noise * rng.normal(size=n_genes) for a, b in pairs}
    return measured, combos


def test_calibration_on_changed_genes_escapes_regression_dilution():
    measured, combos = _sparse_screen(noise=0.5)
    # On every gene, the singles' noise on the 190 unchanged ones pulls the scale towards 0 ...
    every = AdditiveShiftPrior(measured, 200, combo_deltas=combos, calibrate=True)
    assert every.scales[(2, 0)] < 0.35
    # ... on each combination's 10 most changed genes only the noise of those genes attenuates
    # the planted scale 1: about 4 / (4 + 2 * 0.5**2) = 0.89.
    changed = AdditiveShiftPrior(
        measured, 200, combo_deltas=combos, calibrate=True, calibration_genes=10
    )
    assert 0.83 < changed.scales[(2, 0)] < 1.05
    # Without noise both read the planted scale.
    clean, clean_combos = _sparse_screen(noise=0.0)
    for k in (0, 10):
        model = AdditiveShiftPrior(
            clean, 200, combo_deltas=clean_combos, calibrate=True, calibration_genes=k
        )
        assert abs(model.scales[(2, 0)] - 1.0) < 1e-6
    with pytest.raises(ValueError, match="calibration_genes"):
        AdditiveShiftPrior(measured, 200, calibration_genes=-1)


def _targeted_screen(n_singles: int = 12, n_genes: int = 30, seed: int = 5):
    """Singles ``S0..`` that are also measured genes (columns 0..), each knocking itself down."""
    rng, genes, deltas = _screen(n_singles, n_genes, seed)
    var_names = genes + [f"V{i}" for i in range(n_genes - n_singles)]
    for i, gene in enumerate(genes):
        deltas[gene][i] = -3.0 + 0.1 * rng.normal()
    return rng, genes, deltas, var_names


def test_target_aware_fallback_adds_the_mean_on_target_residual():
    _, genes, deltas, var_names = _targeted_screen()
    unseen_names = var_names[:12] + ["NEW"] + var_names[13:]  # NEW: measured, never perturbed
    model = AdditiveShiftPrior(deltas, 30, var_names=unseen_names, target_aware=True)

    def residual(gene, without=()):
        """A seen single's own change minus the mean of the other singles' change of that gene."""
        i = genes.index(gene)
        others = [deltas[g][i] for g in genes if g != gene and g not in without]
        return deltas[gene][i] - np.mean(others)

    mean_residual = np.mean([residual(g) for g in genes])
    new = model.gene_delta("NEW")
    assert new[12] == pytest.approx(model.mean_delta[12] + mean_residual, rel=1e-5)
    assert mean_residual < -2.5  # the planted knock-downs
    others = np.delete(np.arange(30), 12)
    np.testing.assert_allclose(new[others], model.mean_delta[others], rtol=1e-6)
    # A hidden seen gene: leave-one-out fallback plus the other singles' mean residual.
    hidden = model.gene_delta("S3", hidden=True)
    loo = np.mean([deltas[g] for g in genes if g != "S3"], axis=0)
    expected = loo[3] + np.mean([residual(g) for g in genes if g != "S3"])
    assert hidden[3] == pytest.approx(expected, rel=1e-5)
    rest = np.delete(np.arange(30), 3)
    np.testing.assert_allclose(hidden[rest], loo[rest], rtol=1e-5)
    np.testing.assert_allclose(model.gene_delta("S3"), deltas["S3"], rtol=1e-6)
    # An unmeasured gene has no column of its own: the plain fallback.
    np.testing.assert_allclose(model.gene_delta("ABSENT"), model.mean_delta, rtol=1e-6)
    # Off, the fallback knows nothing about a gene's own column.
    plain = AdditiveShiftPrior(deltas, 30, var_names=unseen_names)
    assert plain.gene_delta("NEW")[12] == pytest.approx(model.mean_delta[12], rel=1e-6)


def test_target_aware_calibration_scales_own_columns_apart():
    rng, genes, deltas, var_names = _targeted_screen()
    pairs = [(genes[i], genes[j]) for i, j in [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9), (1, 5)]]
    combos = {}
    for a, b in pairs:
        own = np.isin(np.arange(30), [genes.index(a), genes.index(b)])
        summed = deltas[a] + deltas[b]
        # Downstream effects buffer to half; each target keeps its full knock-down.
        combos[f"{a}+{b}"] = np.where(own, summed, 0.5 * summed) + 0.01 * rng.normal(size=30)
    model = AdditiveShiftPrior(
        deltas, 30, combo_deltas=combos, calibrate=True, var_names=var_names, target_aware=True
    )
    assert model.scales[(2, 0)] == pytest.approx(0.5, abs=0.02)
    assert model.target_scales[(2, 0)] == pytest.approx(1.0, abs=0.02)
    shift = model.shifts(["S10+S11"])[0]
    summed = deltas["S10"] + deltas["S11"]
    np.testing.assert_allclose(shift[[10, 11]], model.target_scales[(2, 0)] * summed[[10, 11]])
    np.testing.assert_allclose(shift[:10], model.scales[(2, 0)] * summed[:10], rtol=1e-5)
    # One scale for all columns would sit in between and miss both.
    single = AdditiveShiftPrior(deltas, 30, combo_deltas=combos, calibrate=True)
    assert single.target_scales == {} and 0.5 < single.scales[(2, 0)] < 1.0


def test_coupling_columns_are_regression_slopes_with_and_without_left_out_cells():
    rng = np.random.default_rng(0)
    cells = rng.normal(size=(60, 5))
    cells[:, 2] = 3.0 * cells[:, 0] + 0.1 * rng.normal(size=60)
    cells[:, 4] = 1.0  # does not vary
    genes = ["A", "B", "C", "D", "E"]
    left = np.zeros(60, dtype=bool)
    left[:15] = True
    slopes, held = coupling_columns(cells, genes, ["A", "E", "MISSING"], {"A": left})
    assert set(slopes) == {"A", "E"} and set(held) == {"A"}

    def slope(x, y):
        return np.cov(y, x, bias=True)[0, 1] / np.var(x)

    expected = [slope(cells[:, 0], cells[:, j]) for j in range(5)]
    expected[0] = 0.0  # a gene's own change is modelled apart
    np.testing.assert_allclose(slopes["A"], expected, atol=1e-5)
    assert slopes["A"][2] == pytest.approx(3.0, abs=0.05)
    kept = cells[~left]
    expected = [slope(kept[:, 0], kept[:, j]) for j in range(5)]
    expected[0] = 0.0
    np.testing.assert_allclose(held["A"], expected, atol=1e-5)
    np.testing.assert_array_equal(slopes["E"], np.zeros(5))
    # A sparse matrix gives the same slopes.
    sparse_slopes, sparse_held = coupling_columns(sp.csr_matrix(cells), genes, ["A"], {"A": left})
    np.testing.assert_allclose(sparse_slopes["A"], slopes["A"], atol=1e-5)
    np.testing.assert_allclose(sparse_held["A"], held["A"], atol=1e-5)


def test_propagation_moves_the_genes_that_co_vary_with_an_unseen_target():
    _, genes, deltas, var_names = _targeted_screen()
    names = var_names[:12] + ["NEW"] + var_names[13:]  # NEW (column 12): measured, never perturbed
    slopes = np.zeros(30, np.float32)
    slopes[20] = 2.0  # column 20 rises twice as much as NEW across the training cells
    held = {g: np.full(30, 0.5, np.float32) for g in genes}
    for i, g in enumerate(genes):
        held[g][i] = 0.0
    model = AdditiveShiftPrior(
        deltas,
        30,
        var_names=names,
        target_aware=True,
        coupling={"NEW": slopes},
        coupling_held_out=held,
    )
    plain = AdditiveShiftPrior(deltas, 30, var_names=names, target_aware=True)
    own = plain.gene_delta("NEW")[12] - plain.mean_delta[12]  # the mean on-target residual
    assert own < -2.5
    np.testing.assert_allclose(
        model.gene_delta("NEW"), plain.gene_delta("NEW") + own * slopes, rtol=1e-5
    )
    # A hidden seen gene uses its slopes without its own cells; seen, it keeps its own delta.
    base = plain.gene_delta("S3", hidden=True)
    hidden_own = base[3] - np.mean([deltas[g][3] for g in genes if g != "S3"])
    np.testing.assert_allclose(
        model.gene_delta("S3", hidden=True), base + hidden_own * held["S3"], rtol=1e-5
    )
    np.testing.assert_allclose(model.gene_delta("S3"), deltas["S3"], rtol=1e-6)
    with pytest.raises(ValueError, match="needs target_aware"):
        AdditiveShiftPrior(deltas, 30, var_names=names, coupling={"NEW": slopes})


def test_target_aware_needs_matching_var_names():
    _, _, deltas, var_names = _targeted_screen()
    with pytest.raises(ValueError, match="target_aware needs var_names"):
        AdditiveShiftPrior(deltas, 30, target_aware=True)
    with pytest.raises(ValueError, match="var_names has 29 names for 30 genes"):
        AdditiveShiftPrior(deltas, 30, var_names=var_names[:29])


@pytest.fixture(scope="module")
def screen(screen_data):
    return screen_data(
        "tiny",
        split_seed=1,
        n_perturbed=10,
        n_doubles=14,
        n_control_cells=150,
        n_cells_per_condition=25,
        seed=3,
    )


def test_model_predicts_the_estimator_s_shifts_and_round_trips(screen, tmp_path):
    dataset, split = screen
    model = get_model("calibrated_additive").fit(dataset, split)
    test = list(split.test)
    deltas = model.predict_delta(test)
    np.testing.assert_allclose(deltas.to_numpy(), model.estimator_.shifts(test), rtol=1e-6)
    assert model.estimator_.scales, "the simulator's training doubles calibrate a scale"
    cells = model.predict(test, n_cells=9, seed=1)
    means = (
        pd.DataFrame(np.asarray(cells.X))
        .groupby(cells.obs["perturbflow_condition"].to_numpy())
        .mean()
    )
    np.testing.assert_allclose(
        means.loc[test].to_numpy(), model.control_mean_ + deltas.to_numpy(), atol=1e-4
    )
    loaded = load_model(model.save(tmp_path / "calibrated.npz"))
    pd.testing.assert_frame_equal(loaded.predict_delta(test), deltas)
    assert loaded.estimator_.scales == model.estimator_.scales


def test_propagation_round_trips_and_changes_only_conditions_with_a_hidden_gene(screen, tmp_path):
    dataset, split = screen
    model = get_model("calibrated_additive").fit(dataset, split)  # propagate=True by default
    plain = get_model("calibrated_additive", CalibratedAdditiveConfig(propagate=False))
    plain = plain.fit(dataset, split)
    assert plain.coupling_ == {}
    unaware = CalibratedAdditiveConfig(target_aware=False)  # nothing to spread: no slopes
    assert get_model("calibrated_additive", unaware).fit(dataset, split).coupling_ == {}
    assert set(model.coupling_) == set(dataset.perturbed_genes) & set(dataset.genes)
    assert set(model.coupling_held_out_) <= set(model.coupling_)
    test = list(split.test)
    moved = (model.predict_delta(test) - plain.predict_delta(test)).abs().max(axis=1)
    seen = {g for name in split.train for g in name.split("+")}
    unseen = [name for name in test if set(name.split("+")) - seen]
    assert unseen, "the simulation split holds out genes"
    assert moved[unseen].min() > 1e-4
    assert moved.drop(unseen).max() < 1e-6  # conditions of seen genes keep their prediction
    loaded = load_model(model.save(tmp_path / "propagate.npz"))
    pd.testing.assert_frame_equal(loaded.predict_delta(test), model.predict_delta(test))


def test_calibration_switch_changes_combination_predictions(screen):
    dataset, split = screen
    doubles = [name for name in split.test if "+" in name]
    calibrated = get_model("calibrated_additive").fit(dataset, split).predict_delta(doubles)
    plain_model = get_model(
        "calibrated_additive",
        CalibratedAdditiveConfig(calibrate=False, target_aware=False, combination_weight=0.0),
    ).fit(dataset, split)
    additive = get_model("additive").fit(dataset, split).predict_delta(doubles)
    # Without calibration, target-aware fill or pooled effects it is exactly additive ...
    np.testing.assert_allclose(plain_model.predict_delta(doubles), additive, atol=1e-6)
    # ... and the calibration moves the combinations.
    assert np.abs(calibrated.to_numpy() - additive.to_numpy()).max() > 1e-2


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="unseen"):
        CalibratedAdditiveConfig(unseen="median")
    with pytest.raises(ValueError, match="n_components"):
        CalibratedAdditiveConfig(n_components=0)
    with pytest.raises(ValueError, match="calibration_genes"):
        CalibratedAdditiveConfig(calibration_genes=-1)
    with pytest.raises(ValueError, match="max_fit_cells"):
        CalibratedAdditiveConfig(max_fit_cells=1)
    assert CalibratedAdditiveConfig().unseen_mode == "mean"
    assert CalibratedAdditiveConfig(embedding="go").unseen_mode == "ridge"


def test_gene_statistics_use_a_seeded_sample_of_max_fit_cells(screen):
    dataset, split = screen
    n_train = int(dataset.cell_mask(list(split.train)).sum())
    everything = get_model("calibrated_additive").fit(dataset, split)
    capped = CalibratedAdditiveConfig(max_fit_cells=n_train)  # at the cap: every cell
    at_cap = get_model("calibrated_additive", capped).fit(dataset, split)
    for gene, slopes in everything.coupling_.items():
        np.testing.assert_array_equal(at_cap.coupling_[gene], slopes)

    config = CalibratedAdditiveConfig(max_fit_cells=120)
    model = get_model("calibrated_additive", config).fit(dataset, split)
    rows = model._statistics_rows(dataset, list(split.train))
    assert len(rows) == 120 and np.all(np.diff(rows) > 0)
    assert dataset.cell_mask(list(split.train))[rows].all()  # training cells only
    labels = dataset.condition_labels.to_numpy()[rows]
    leave_out = {
        gene: np.isin(labels, [c for c in split.train if gene in c.split("+")])
        for gene in {g for c in split.train for g in c.split("+") if c != "ctrl"}
    }
    expected, _ = coupling_columns(
        dataset.rows(rows), dataset.genes, sorted(dataset.perturbed_genes), leave_out
    )
    assert set(model.coupling_) == set(expected)
    for gene, slopes in expected.items():
        np.testing.assert_array_equal(model.coupling_[gene], slopes)
    assert any(
        np.abs(model.coupling_[g] - everything.coupling_[g]).max() > 1e-4 for g in expected
    ), "a sample of the cells gives other slopes"
    again = get_model("calibrated_additive", config).fit(dataset, split)
    for gene, slopes in model.coupling_.items():
        np.testing.assert_array_equal(again.coupling_[gene], slopes)  # seeded


def _moves_the_test_conditions_and_round_trips(model, plain, test, tmp_path) -> None:
    """``model`` predicts ``test`` differently from ``plain`` and its checkpoint predicts the
    same as itself."""
    moved = model.predict_delta(test).to_numpy() - plain.predict_delta(test).to_numpy()
    assert np.abs(moved).max() > 1e-3
    loaded = load_model(model.save(tmp_path / "model.npz"))
    pd.testing.assert_frame_equal(loaded.predict_delta(test), model.predict_delta(test))


def test_combination_weight_starts_from_the_pooled_effects_and_round_trips(
    screen, tmp_path, monkeypatch
):

    import perturbflow.models.baselines.calibrated as calibrated_module
    from perturbflow.models.baselines.pooled import pooled_effects
    from perturbflow.models.scbig import ScBIGConfig

    dataset, split = screen
    config = CalibratedAdditiveConfig(combination_weight=1.0, pooled_if_better=False)
    model = get_model("calibrated_additive", config).fit(dataset, split)
    names = [n for n in model.train_deltas_.index if n != "ctrl"]
    cells = dataset.cells_per_condition.reindex(names).to_numpy(float)
    genes, effects = pooled_effects(model.train_deltas_.loc[names].to_numpy(), names, cells, 1.0)
    singles = {n for n in names if "+" not in n}
    assert set(model.pooled_) == singles
    for gene, effect in zip(genes, effects, strict=True):
        if gene in singles:
            np.testing.assert_array_equal(model.pooled_[gene], effect)
            row = model.estimator_.genes.index(gene)
            np.testing.assert_allclose(model.estimator_.own_deltas[row], effect, rtol=1e-6)
    plain = get_model("calibrated_additive", CalibratedAdditiveConfig(combination_weight=0.0))
    plain.fit(dataset, split)
    assert plain.pooled_ == {}
    assert get_model("calibrated_additive").config.combination_weight == 0.0  # the default
    # The fallbacks of unseen genes still average the singles' own deltas.
    np.testing.assert_array_equal(model.estimator_.mean_delta, plain.estimator_.mean_delta)
    # Without the held-out choice, with the network map: pooled effects only where the map's
    # choice is "no map".
    both = CalibratedAdditiveConfig(combination_weight=1.0, network=True, pooled_if_better=False)
    no_map = get_model("calibrated_additive", both).fit(dataset, split)
    single_means = NetworkAdditiveConfig(combination_weight=0.0)
    assert (
        get_model("network_additive", single_means).fit(dataset, split).estimator_.network.penalty
        is None
    )
    assert no_map.estimator_.network is None
    np.testing.assert_array_equal(no_map.estimator_.own_deltas, model.estimator_.own_deltas)
    real_fit = calibrated_module.fit_network_map

    def chosen(shifts, residuals):  # a map "chosen" by its leave-one-out error
        return dataclasses.replace(real_fit(shifts, residuals), penalty=1.0)

    monkeypatch.setattr(calibrated_module, "fit_network_map", chosen)
    mapped = get_model("calibrated_additive", both).fit(dataset, split)
    assert mapped.estimator_.network.penalty == 1.0
    np.testing.assert_array_equal(mapped.estimator_.own_deltas, plain.estimator_.deltas)
    monkeypatch.undo()
    _moves_the_test_conditions_and_round_trips(model, plain, list(split.test), tmp_path)
    with pytest.raises(ValueError, match="combination_weight"):
        CalibratedAdditiveConfig(combination_weight=-0.5)
    with pytest.raises(ValueError, match="prior_combination_weight"):
        ScBIGConfig(prior_combination_weight=float("nan"))


def _held_out_pooled_error(model, dataset) -> float:
    """Brute force of the closed form: each training combination of seen genes predicted by the
    calibrated sum of pooled effects refitted without it."""
    from perturbflow.models.baselines.pooled import pooled_effects

    names = [n for n in model.train_deltas_.index if n != "ctrl"]
    singles = {n for n in names if "+" not in n}
    combos = [n for n in names if "+" in n and set(n.split("+")) <= singles]
    weight = model.config.combination_weight
    errors = []
    for held in combos:
        rest = [n for n in names if n != held]
        cells = dataset.cells_per_condition.reindex(rest).to_numpy(float)
        genes, effects = pooled_effects(
            model.train_deltas_.loc[rest].to_numpy(), rest, cells, weight
        )
        effect = dict(zip(genes, effects, strict=True))
        summed = np.sum([effect[g] for g in held.split("+")], axis=0).astype(np.float64)
        scales = model.pooled_estimator_.scale_vector(held)
        target = model.train_deltas_.loc[held].to_numpy(np.float64)
        changed = model.pooled_estimator_._changed_mask(target)  # its 20 most changed genes
        assert changed.sum() == model.config.calibration_genes
        errors.append(((target - scales * summed) ** 2)[changed])
    return float(np.mean(errors))


@pytest.mark.parametrize("network", [False, True])
def test_pooled_effects_are_used_where_they_predict_held_out_training_combinations_better(
    screen, network, tmp_path, caplog
):
    from perturbflow.models.scbig import ScBIGConfig

    dataset, split = screen
    config = CalibratedAdditiveConfig(combination_weight=1.0, network=network)
    assert config.pooled_if_better  # the default
    with caplog.at_level(logging.INFO, logger="perturbflow"):
        model = get_model("calibrated_additive", config).fit(dataset, split)
    errors = model.held_out_errors_
    # The closed form equals refitting the pooled effects without each combination.
    np.testing.assert_allclose(errors["pooled"], _held_out_pooled_error(model, dataset), rtol=1e-4)
    singles = get_model(
        "calibrated_additive", dataclasses.replace(config, combination_weight=0.0)
    ).fit(dataset, split)
    seen = {n for n in model.train_deltas_.index if "+" not in n}
    names = sorted(n for n in model.train_deltas_.index if "+" in n and set(n.split("+")) <= seen)
    targets = model.train_deltas_.loc[names].to_numpy(np.float64)
    expected_singles = singles.estimator_._summed(names, [frozenset()] * len(names))
    if network and singles.estimator_.network.penalty is not None:
        expected_singles = expected_singles + singles.estimator_.network.held_out
    changed = np.vstack([singles.estimator_._changed_mask(t) for t in targets])
    np.testing.assert_allclose(
        errors["singles"], np.mean(((targets - expected_singles) ** 2)[changed]), rtol=1e-5
    )
    used = model.estimator_ is model.pooled_estimator_
    assert used == (errors["pooled"] < errors["singles"]) == model.uses_pooled_effects
    assert not singles.uses_pooled_effects
    expected = model.pooled_estimator_ if used else singles.estimator_
    test = list(split.test)
    np.testing.assert_allclose(
        model.estimator_.shifts(test), expected.shifts(test), rtol=1e-5, atol=1e-6
    )
    assert "held-out training combinations" in caplog.text
    loaded = load_model(model.save(tmp_path / "choice.npz"))
    pd.testing.assert_frame_equal(loaded.predict_delta(test), model.predict_delta(test))
    assert ScBIGConfig().prior_pooled_if_better and ScBIGConfig().prior_combination_weight == 1.0


def test_pooled_share_moves_seen_gene_conditions_towards_pooled_additive(screen, tmp_path):
    from perturbflow.models.scbig import ScBIGConfig

    dataset, split = screen
    test = list(split.test)
    plain = get_model("calibrated_additive").fit(dataset, split).predict_delta(test)
    pooled = get_model("pooled_additive").fit(dataset, split).predict_delta(test)
    seen = {n for n in split.train if "+" not in n and n != "ctrl"}
    covered = [n for n in test if set(n.split("+")) <= seen]
    others = [n for n in test if n not in covered]
    assert covered and others, "the split has conditions of seen and of unseen genes"
    for share in (0.5, 1.0):
        config = CalibratedAdditiveConfig(pooled_share=share)
        model = get_model("calibrated_additive", config).fit(dataset, split)
        blended = model.predict_delta(test)
        expected = (1 - share) * plain.loc[covered] + share * pooled.loc[covered]
        np.testing.assert_allclose(blended.loc[covered], expected, atol=1e-5)
        pd.testing.assert_frame_equal(blended.loc[others], plain.loc[others])  # unseen genes
    loaded = load_model(model.save(tmp_path / "blend.npz"))
    pd.testing.assert_frame_equal(loaded.predict_delta(test), model.predict_delta(test))
    with pytest.raises(ValueError, match="pooled_share"):
        CalibratedAdditiveConfig(pooled_share=1.5)
    with pytest.raises(ValueError, match="prior_pooled_share"):
        ScBIGConfig(prior_pooled_share=-0.1)


def test_a_gene_only_in_combinations_takes_its_combination_effect_unless_hidden():
    rng, genes, deltas = _screen()
    effect = rng.normal(size=30)
    extra = {"A": effect, "S0": rng.normal(size=30)}  # S0 has a single: its own delta wins
    model = AdditiveShiftPrior(deltas, 30, combination_effects=extra)
    np.testing.assert_allclose(model.gene_delta("S0"), deltas["S0"], rtol=1e-6)
    np.testing.assert_allclose(model.gene_delta("A"), effect, rtol=1e-6)
    np.testing.assert_allclose(model.shifts(["A+S1"])[0], effect + deltas["S1"], rtol=1e-5)
    assert model.measured("A") and not model.measured("B")
    assert model.category("A+S1") == (2, 0) and model.category("A+B") == (2, 1)
    # Hidden, it is an unseen gene again: the fallback, and its category counts it unseen.
    np.testing.assert_allclose(model.gene_delta("A", hidden=True), model.mean_delta, rtol=1e-6)
    assert model.category("A+S1", frozenset({"A"})) == (2, 1)
    plain = AdditiveShiftPrior(deltas, 30)
    np.testing.assert_allclose(plain.gene_delta("A"), plain.mean_delta, rtol=1e-6)


def test_combination_genes_predict_a_gene_without_single_as_pooled_additive_does(screen, tmp_path):
    from perturbflow.data.splits import make_split

    dataset, _ = screen
    singles = sorted(n for n in dataset.conditions if "+" not in n and n != "ctrl")
    in_combos = {g for n in dataset.conditions if "+" in n for g in n.split("+")}
    gene = next(g for g in singles if g in in_combos)
    reduced = dataset.subset([n for n in dataset.conditions if n != gene])
    split = make_split("combo", reduced.conditions, seed=1)
    assert any(gene in n.split("+") for n in split.train), "the gene stays in training combos"
    model = get_model("calibrated_additive").fit(reduced, split)
    assert model.config.combination_genes and gene in model.combination_effects_
    pooled = get_model("pooled_additive").fit(reduced, split)
    np.testing.assert_allclose(
        model.predict_delta([gene]).to_numpy(), pooled.predict_delta([gene]).to_numpy(), atol=1e-5
    )
    off = CalibratedAdditiveConfig(combination_genes=False)
    fallback = get_model("calibrated_additive", off).fit(reduced, split)
    assert fallback.combination_effects_ == {}
    np.testing.assert_allclose(
        fallback.predict_delta([gene]).to_numpy()[0],
        fallback.estimator_.shifts([gene])[0],
        rtol=1e-6,
    )
    assert (
        np.abs(
            fallback.predict_delta([gene]).to_numpy() - model.predict_delta([gene]).to_numpy()
        ).max()
        > 1e-2
    )
    test = list(split.test)
    loaded = load_model(model.save(tmp_path / "combination_genes.npz"))
    pd.testing.assert_frame_equal(loaded.predict_delta(test), model.predict_delta(test))


def test_an_unmeasured_gene_perturbed_only_in_training_combinations_is_known(screen, caplog):
    from perturbflow.data import read
    from perturbflow.data.splits import make_split

    dataset, _ = screen
    singles = sorted(n for n in dataset.conditions if "+" not in n and n != "ctrl")
    in_combos = {g for n in dataset.conditions if "+" in n for g in n.split("+")}
    gene = next(g for g in singles if g in in_combos and g in set(dataset.genes))
    adata = dataset.adata[dataset.adata.obs["condition"] != gene].copy()
    adata = adata[:, adata.var_names != gene].copy()  # perturbed, never measured
    reduced = read(adata, condition_key="condition")
    split = make_split("combo", reduced.conditions, seed=1)
    assert gene not in set(reduced.genes)
    for name in ("calibrated_additive", "pooled_additive"):
        model = get_model(name).fit(reduced, split)
        assert gene in model.known_genes()
        with caplog.at_level("WARNING"):
            model.predict_delta([gene])
        assert "never measured or perturbed" not in caplog.text, name


def test_shrinkage_shrinks_each_single_entry_by_its_sampling_noise(screen, tmp_path):
    from perturbflow.models.scbig import ScBIGConfig

    dataset, split = screen
    single_means = CalibratedAdditiveConfig(combination_weight=0.0)
    model = get_model("calibrated_additive", dataclasses.replace(single_means, shrinkage=1.0))
    model.fit(dataset, split)
    plain = get_model("calibrated_additive", single_means).fit(dataset, split)
    assert plain.shrunk_ == {}
    counts = dataset.cells_per_condition
    singles = [n for n in split.train if "+" not in n and n != "ctrl"]
    assert set(model.shrunk_) == set(singles)
    control = dataset.control_expression().astype(np.float64)
    noise_ctrl = control.var(axis=0, ddof=1) / len(control)
    zeroed = 0
    for name in singles:
        cells = dataset.expression(name).astype(np.float64)
        delta = cells.mean(axis=0) - control.mean(axis=0)
        noise = cells.var(axis=0, ddof=1) / counts[name] + noise_ctrl
        factor = np.clip(1.0 - noise / delta**2, 0.0, 1.0)
        np.testing.assert_allclose(model.shrunk_[name], delta * factor, atol=1e-5)
        row = model.estimator_.genes.index(name)
        np.testing.assert_array_equal(model.estimator_.own_deltas[row], model.shrunk_[name])
        np.testing.assert_array_equal(model.estimator_.deltas[row], plain.estimator_.deltas[row])
        np.testing.assert_array_equal(model.estimator_.gene_delta(name), model.shrunk_[name])
        zeroed += int((np.abs(delta) < np.sqrt(noise)).sum())
        assert np.all(model.shrunk_[name][np.abs(delta) < np.sqrt(noise)] == 0)
    assert zeroed > 0, "the screen has entries within their noise"
    # The fallback of an unseen gene averages the singles unshrunk.
    np.testing.assert_array_equal(model.estimator_.mean_delta, plain.estimator_.mean_delta)
    _moves_the_test_conditions_and_round_trips(model, plain, list(split.test), tmp_path)
    with pytest.raises(ValueError, match="shrinkage"):
        CalibratedAdditiveConfig(shrinkage=-1.0)
    with pytest.raises(ValueError, match="prior_shrinkage"):
        ScBIGConfig(prior_shrinkage=float("inf"))
