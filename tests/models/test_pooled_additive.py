"""pooled_additive: gene effects fitted on singles and combinations together."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from perturbflow.models import get_model, load_model
from perturbflow.models.baselines import PooledAdditiveConfig
from perturbflow.models.baselines.pooled import pooled_effects


def test_effects_are_the_weighted_least_squares_fit():
    conditions = ["A", "B", "A+B", "A+C"]
    deltas = np.array([[1.0, 0.0], [0.0, 2.0], [1.5, 2.5], [3.0, -1.0]])  # (C, G)
    cells = np.array([10.0, 20.0, 30.0, 40.0])
    genes, effects = pooled_effects(deltas, conditions, cells, combination_weight=0.5)
    assert genes == ["A", "B", "C"]
    design = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [1, 0, 1]], dtype=float)
    weight = np.sqrt(cells * np.array([1, 1, 0.5, 0.5]))[:, None]
    expected = np.linalg.lstsq(design * weight, deltas * weight, rcond=None)[0]
    np.testing.assert_allclose(effects, expected, rtol=1e-6)
    # C is in one combination only: its effect is what A+C leaves after A's fitted effect.
    np.testing.assert_allclose(effects[2], deltas[3] - effects[0], rtol=1e-6)


def test_zero_combination_weight_keeps_the_singles():
    conditions = ["A", "B", "A+B"]
    deltas = np.array([[1.0, 0.0], [0.0, 2.0], [5.0, 5.0]])
    _, effects = pooled_effects(deltas, conditions, np.array([5.0, 5.0, 5.0]), 0.0)
    np.testing.assert_allclose(effects, deltas[:2], atol=1e-6)


def test_pooling_reduces_the_noise_of_additive_combinations():
    # True effects are additive; every condition is measured with the same noise per cell.
    rng = np.random.default_rng(0)
    n_genes, n_cells, noise = 8, 20, 1.0
    truth = {g: rng.normal(0, 1, 50) for g in "ABCDEFGH"[:n_genes]}
    singles = list(truth)
    pairs = [f"{a}+{b}" for i, a in enumerate(singles) for b in singles[i + 1 :]]
    rng.shuffle(pairs)
    train, test = singles + pairs[:16], pairs[16:]

    def measured(name):
        mean = sum(truth[g] for g in name.split("+"))
        return mean + rng.normal(0, noise / np.sqrt(n_cells), 50)

    deltas = np.vstack([measured(name) for name in train])
    cells = np.full(len(train), float(n_cells))
    genes, pooled = pooled_effects(deltas, train, cells, 1.0)
    effect = dict(zip(genes, pooled, strict=True))
    single = dict(zip(singles, deltas[: len(singles)], strict=True))
    error_pooled = [
        np.mean((effect[a] + effect[b] - truth[a] - truth[b]) ** 2)
        for a, b in (n.split("+") for n in test)
    ]
    error_additive = [
        np.mean((single[a] + single[b] - truth[a] - truth[b]) ** 2)
        for a, b in (n.split("+") for n in test)
    ]
    assert np.mean(error_pooled) < 0.7 * np.mean(error_additive)


def test_model_equals_additive_without_combinations_and_round_trips(screen_data, tmp_path):
    dataset, split = screen_data("small", split="combo", split_seed=1)
    test = list(split.test)
    plain = get_model("pooled_additive", PooledAdditiveConfig(combination_weight=0.0))
    additive = get_model("additive").fit(dataset, split).predict_delta(test)
    np.testing.assert_allclose(
        plain.fit(dataset, split).predict_delta(test).to_numpy(), additive.to_numpy(), atol=1e-5
    )
    model = get_model("pooled_additive").fit(dataset, split)
    pooled = model.predict_delta(test)
    assert np.abs(pooled.to_numpy() - additive.to_numpy()).max() > 1e-3
    loaded = load_model(model.save(tmp_path / "pooled.npz"))
    pd.testing.assert_frame_equal(loaded.predict_delta(test), pooled)
    # A gene no training condition perturbs gets the mean effect of the genes with a single.
    unknown = model.predict_delta(["NOTAGENE"]).to_numpy()[0]
    np.testing.assert_allclose(unknown, model.mean_effect_, rtol=1e-6)


def test_config_refuses_a_negative_weight():
    with pytest.raises(ValueError, match="combination_weight"):
        PooledAdditiveConfig(combination_weight=-1.0)
