"""The learned combinator: recovers planted rules of how singles combine into doubles.

The planted screens are built by hand: each condition's cells are the same control cells shifted
by its planted delta, so the training deltas are exact and the double rule is known.
"""

from __future__ import annotations

import itertools
import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from perturbflow.data import PerturbationDataset, read
from perturbflow.data.splits import Split
from perturbflow.models import get_model, load_model
from perturbflow.models.baselines import CombinatorConfig
from perturbflow.models.baselines.combinator import FEATURES, pair_features

GENES = [f"G{i:02d}" for i in range(40)]
SINGLES = GENES[:10]  # the perturbed genes are measured: their own column is knocked down


def planted_screen(rule, seed: int = 0):
    """Control + 10 singles + 30 doubles whose deltas follow ``rule(δA, δB, a, b) -> (G,)``.

    Returns the dataset, the planted deltas and a split: train = control, every single and 20
    doubles; test = the other 10 doubles.
    """
    rng = np.random.default_rng(seed)
    base = rng.uniform(2.5, 3.5, len(GENES))  # (G,) control mean
    deltas = {}
    for i, gene in enumerate(SINGLES):
        delta = rng.uniform(-0.6, 0.6, len(GENES))  # (G,)
        delta[i] = rng.uniform(-1.0, -0.6)  # the knocked-out gene itself
        deltas[gene] = delta
    pairs = list(itertools.combinations(range(len(SINGLES)), 2))
    chosen = [pairs[k] for k in rng.choice(len(pairs), 30, replace=False)]
    doubles = []
    for i, j in chosen:
        a, b = SINGLES[i], SINGLES[j]
        doubles.append(f"{a}+{b}")
        deltas[doubles[-1]] = rule(deltas[a], deltas[b], i, j)
    noise = rng.normal(0.0, 0.2, (12, len(GENES)))  # (n, G)
    control = base[None, :] + noise - noise.mean(axis=0)  # mean exactly ``base``
    blocks = [control] + [control + delta[None, :] for delta in deltas.values()]
    labels = ["ctrl"] * len(control) + [name for name in deltas for _ in range(len(control))]
    assert min(block.min() for block in blocks) > 0, "planted data must look log-normalised"
    adata = ad.AnnData(
        X=np.vstack(blocks).astype(np.float32),
        obs=pd.DataFrame({"condition": labels}, index=[f"c{i}" for i in range(len(labels))]),
        var=pd.DataFrame(index=GENES),
    )
    split = Split(
        kind="custom",
        seed=0,
        train=("ctrl", *SINGLES, *doubles[:20]),
        val=(),
        test=tuple(doubles[20:]),
        subgroups=dict.fromkeys(doubles[20:], "combo_seen2"),
    )
    return read(adata), deltas, split


def interaction_rule(delta_a, delta_b, i, j):
    """Sub-additive with an interaction; a knocked-out gene keeps its single's value."""
    double = 0.6 * (delta_a + delta_b) - 0.5 * delta_a * delta_b
    double[i], double[j] = delta_a[i], delta_b[j]
    return double


def linear_rule(delta_a, delta_b, i, j):
    return 0.7 * (delta_a + delta_b)


@pytest.fixture(scope="module")
def interaction_screen() -> tuple[PerturbationDataset, dict[str, np.ndarray], Split]:
    return planted_screen(interaction_rule)


@pytest.fixture(scope="module")
def fitted(interaction_screen):
    dataset, _, split = interaction_screen
    return get_model("combinator").fit(dataset, split)


def mse(predicted: pd.DataFrame, deltas: dict[str, np.ndarray]) -> float:
    truth = np.vstack([deltas[name] for name in predicted.index])
    return float(((predicted.to_numpy() - truth) ** 2).mean())


def test_boosting_recovers_a_planted_non_additive_rule(interaction_screen, fitted) -> None:
    dataset, deltas, split = interaction_screen
    additive = get_model("additive").fit(dataset, split).predict_delta(split.test)
    combined = fitted.predict_delta(split.test)
    assert mse(combined, deltas) < 0.2 * mse(additive, deltas)
    # The knocked-out genes keep their single's value (the is_target / own features).
    for name in split.test:
        a, b = name.split("+")
        np.testing.assert_allclose(
            combined.loc[name, [a, b]],
            [deltas[a][GENES.index(a)], deltas[b][GENES.index(b)]],
            atol=0.15,
        )


def test_linear_regressor_recovers_a_planted_linear_rule_nearly_exactly() -> None:
    dataset, deltas, split = planted_screen(linear_rule, seed=1)
    model = get_model("combinator", CombinatorConfig(regressor="linear")).fit(dataset, split)
    predicted = model.predict_delta(split.test)
    truth = np.vstack([deltas[name] for name in split.test])
    assert mse(predicted, deltas) < 1e-3 * float((truth**2).mean())
    # Three genes fold pairwise in sorted order: f(f(G00, G01), G02) = 0.7 (0.7 (δ0 + δ1) + δ2).
    triple = model.predict_delta(["G02+G00+G01"])
    assert list(triple.index) == ["G00+G01+G02"]
    expected = 0.49 * (deltas["G00"] + deltas["G01"]) + 0.7 * deltas["G02"]
    np.testing.assert_allclose(triple.iloc[0], expected, atol=0.02)


def test_features_are_symmetric_in_the_two_genes(interaction_screen, fitted) -> None:
    _, deltas, _ = interaction_screen
    mask_a = np.arange(len(GENES)) == 0
    mask_b = np.arange(len(GENES)) == 1
    control = np.linspace(1.0, 2.0, len(GENES))
    forward = pair_features(deltas["G00"], mask_a, deltas["G01"], mask_b, control)
    assert forward.shape == (len(GENES), len(FEATURES))
    np.testing.assert_array_equal(
        pair_features(deltas["G01"], mask_b, deltas["G00"], mask_a, control), forward
    )
    pd.testing.assert_frame_equal(
        fitted.predict_delta(["G03+G07"]), fitted.predict_delta(["G07+G03"])
    )


def test_single_predictions_are_the_training_deltas(interaction_screen, fitted) -> None:
    _, deltas, _ = interaction_screen
    predicted = fitted.predict_delta(["G04", "G09"])
    np.testing.assert_allclose(predicted.to_numpy(), [deltas["G04"], deltas["G09"]], atol=1e-5)


def test_a_gene_without_a_training_single_uses_the_mean_single_delta(
    interaction_screen, fitted, caplog
) -> None:
    _, deltas, _ = interaction_screen
    mean_single = np.mean([deltas[gene] for gene in SINGLES], axis=0)
    with caplog.at_level(logging.INFO, logger="perturbflow"):
        predicted = fitted.predict_delta(["G00+NOVEL", "NOVEL"])
    assert "NOVEL" in caplog.text
    np.testing.assert_allclose(predicted.loc["NOVEL"], mean_single, atol=1e-5)
    # The double is the regressor on G00's delta and that fallback (trees are discontinuous:
    # the sides must be the model's own arrays, not the planted ones).
    single = fitted.predict_delta(["G00"]).iloc[0].to_numpy()
    mask = np.arange(len(GENES)) == 0
    unmeasured = np.zeros(len(GENES), dtype=bool)
    rows = pair_features(
        single, mask, predicted.loc["NOVEL"].to_numpy(), unmeasured, fitted.control_mean_
    )
    np.testing.assert_allclose(predicted.loc["G00+NOVEL"], fitted.regressor_.predict(rows))


def test_shifts_match_predict_delta_and_hide_genes_without_leakage(
    interaction_screen, fitted
) -> None:
    _, deltas, split = interaction_screen
    names = ["G00+G01", "G04", "G00+NOVEL"]
    np.testing.assert_allclose(
        fitted.shifts(names), fitted.predict_delta(names).to_numpy(), atol=1e-6
    )
    # A hidden seen gene is replaced by the mean of the *other* singles (its own delta left out).
    others = np.mean([deltas[gene] for gene in SINGLES if gene != "G04"], axis=0)
    hidden = fitted.shifts(["G04"], [frozenset({"G04"})])[0]
    np.testing.assert_allclose(hidden, others, atol=1e-5)
    assert np.abs(hidden - deltas["G04"]).max() > 0.1


def test_without_training_doubles_it_is_exactly_additive(interaction_screen, caplog) -> None:
    dataset, _, split = interaction_screen
    singles_only = Split(
        kind="custom",
        seed=0,
        train=("ctrl", *SINGLES),
        val=(),
        test=split.test,
        subgroups=split.subgroups,
    )
    with caplog.at_level(logging.INFO, logger="perturbflow"):
        model = get_model("combinator").fit(dataset, singles_only)
    assert "additive" in caplog.text
    names = [*split.test, "G00+NOVEL", "G01+G02+G03", "G05"]
    expected = get_model("additive").fit(dataset, singles_only).predict_delta(names)
    np.testing.assert_array_equal(model.predict_delta(names).to_numpy(), expected.to_numpy())


def test_fewer_doubles_than_min_doubles_fall_back_to_the_sum(interaction_screen) -> None:
    dataset, _, split = interaction_screen
    model = get_model("combinator", CombinatorConfig(min_doubles=21)).fit(dataset, split)
    expected = get_model("additive").fit(dataset, split).predict_delta(split.test)
    np.testing.assert_array_equal(model.predict_delta(split.test).to_numpy(), expected.to_numpy())


def test_save_and_load_predict_identically(interaction_screen, fitted, tmp_path) -> None:
    _, _, split = interaction_screen
    names = [*split.test, *split.train[-3:], "G00+NOVEL", "G01+G02+G03"]
    loaded = load_model(fitted.save(tmp_path / "combinator.npz"))
    assert loaded.config == fitted.config
    np.testing.assert_array_equal(
        loaded.predict_delta(names).to_numpy(), fitted.predict_delta(names).to_numpy()
    )


def test_the_seed_fixes_the_row_subsample(interaction_screen) -> None:
    dataset, _, split = interaction_screen

    def predicted(seed: int) -> np.ndarray:
        config = CombinatorConfig(max_rows=300, seed=seed)  # of 800 rows
        return get_model("combinator", config).fit(dataset, split).predict_delta(split.test)

    first = predicted(0).to_numpy()
    np.testing.assert_array_equal(predicted(0).to_numpy(), first)
    assert not np.array_equal(predicted(1).to_numpy(), first)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("regressor", "forest"),
        ("max_iter", 0),
        ("learning_rate", 0.0),
        ("max_leaf_nodes", 1),
        ("max_depth", 0),
        ("min_samples_leaf", 0),
        ("alpha", -1.0),
        ("min_doubles", 0),
        ("max_rows", 0),
    ],
)
def test_bad_config_values_name_the_field(field: str, value) -> None:
    with pytest.raises(ValueError, match=field):
        CombinatorConfig(**{field: value})
