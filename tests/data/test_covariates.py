"""Control cells matched by covariate (context, batch), and the warning when they are not."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from perturbflow.data import (
    ControlCompositionWarning,
    DataValidationError,
    match_control_cells,
    read,
)
from perturbflow.data.covariates import composition_imbalance, match_controls, strata_labels
from perturbflow.data.synthetic import simulate

CONFOUNDED = dict(
    n_genes=40,
    n_programs=4,
    n_perturbed=6,
    n_unmeasured=0,
    n_doubles=4,
    n_control_cells=200,
    n_cells_per_condition=40,
    n_contexts=2,
    context_effect=1.0,
    control_context_fractions=(0.8, 0.2),
    seed=0,
)


@pytest.fixture(scope="module")
def confounded():
    return simulate(**CONFOUNDED)


def test_simulated_contexts_follow_the_requested_composition(confounded):
    control = confounded.obs["condition"] == "ctrl"
    assert confounded.obs.loc[control, "context"].value_counts().to_dict() == {
        "ctx0": 160,
        "ctx1": 40,
    }
    perturbed = confounded.obs.loc[~control, "context"].value_counts(normalize=True)
    assert 0.45 < perturbed["ctx0"] < 0.55  # each perturbed cell's context is an even draw
    by_condition = pd.crosstab(confounded.obs["condition"], confounded.obs["context"])
    assert by_condition.drop(index="ctrl")["ctx0"].nunique() > 1  # mixes vary by chance
    offsets = confounded.uns["synthetic"]["context_offset"]
    assert offsets.shape == (2, 40) and np.all(offsets.loc["ctx0"] == 0)
    assert offsets.loc["ctx1"].abs().mean() > 0.5


def test_one_context_screen_is_unchanged_by_the_context_settings():
    base = dict(n_genes=30, n_perturbed=4, n_doubles=2, n_control_cells=50, seed=3)
    plain = simulate(**base)
    assert "context" not in plain.obs
    np.testing.assert_array_equal(plain.X, simulate(**base, context_effect=5.0).X)


def test_match_controls_gives_every_stratum_the_pooled_control_mean():
    rng = np.random.default_rng(0)
    strata = pd.Series(["a"] * 6 + ["b"] * 6, name="stim")
    is_control = np.array([1, 1, 1, 0, 0, 0] * 2, dtype=bool)
    matrix = rng.normal(size=(12, 3)) + np.repeat([[0.0], [5.0]], 6, axis=0)  # b is +5
    matched, means = match_controls(matrix, strata, is_control, "test")
    pooled = matrix[is_control].mean(axis=0)
    np.testing.assert_allclose(matched[:3].mean(axis=0), pooled, atol=1e-5)
    np.testing.assert_allclose(matched[6:9].mean(axis=0), pooled, atol=1e-5)
    # A perturbed cell keeps its difference from its own stratum's control mean.
    np.testing.assert_allclose(matched[9] - pooled, matrix[9] - matrix[6:9].mean(axis=0), atol=1e-5)
    assert list(means.index) == ["a", "b", "all control cells"]


def test_stratum_without_control_cells_is_refused_by_name():
    strata = pd.Series(["a", "a", "b"], name="donor")
    with pytest.raises(ValueError, match=r"donor value\(s\) \['b'\] have no control cells"):
        match_controls(np.ones((3, 2)), strata, np.array([True, False, False]), "x.h5ad")


def test_a_context_column_with_one_value_is_refused():
    obs = pd.DataFrame({"stim": ["on"] * 4})
    with pytest.raises(ValueError, match=r"obs\['stim'\] has one value \('on'\)"):
        strata_labels(obs, ["stim"], "x.h5ad")


def test_strata_combine_context_and_batch():
    obs = pd.DataFrame({"stim": ["on", "off", "on"], "batch": ["1", "1", "2"]})
    assert list(strata_labels(obs, ["stim", "batch"], "x")) == ["on | 1", "off | 1", "on | 2"]


def test_imbalance_names_the_covariate_and_skips_columns_that_restate_the_condition():
    conditions = pd.Series(["ctrl"] * 100 + ["A"] * 50 + ["B"] * 50)
    is_control = (conditions == "ctrl").to_numpy()
    obs = pd.DataFrame(
        {
            "stim": ["on"] * 80
            + ["off"] * 20
            + ["on", "off"] * 50,  # control 80/20, perturbed 50/50
            "target": conditions,  # a function of the condition: not a covariate
            "batch": ["1", "2"] * 100,  # balanced: nothing to report
        }
    )
    found = composition_imbalance(obs, is_control, conditions)
    assert [item.column for item in found] == ["stim"]
    assert found[0].distance == pytest.approx(0.3)
    assert found[0].control == {"off": 0.2, "on": 0.8}


def test_read_warns_about_unmatched_context_and_matching_silences_it(confounded):
    with pytest.warns(ControlCompositionWarning, match=r"--context-key context"):
        read(confounded)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ControlCompositionWarning)
        matched = read(confounded, context_key="context")
    info = matched.adata.uns["perturbflow"]["control_matching"]
    assert info == {
        "keys": ["context"],
        "n_control_cells": {"ctx0": 160, "ctx1": 40},
        "control_means": "varm['matched_control_mean']",
    }
    assert matched.cell_type_key == "context"
    control = matched.adata.X[(matched.condition_labels == "ctrl").to_numpy()]
    context = matched.adata.obs["context"][(matched.condition_labels == "ctrl").to_numpy()]
    np.testing.assert_allclose(
        control[(context == "ctx0").to_numpy()].mean(axis=0),
        control[(context == "ctx1").to_numpy()].mean(axis=0),
        atol=1e-4,
    )


def test_matched_deltas_remove_the_context_artefact(confounded):
    """Unmatched, every delta carries 0.3 × the context offset (perturbed 50/50, control 80/20);
    matched deltas follow the true within-context change."""
    truth = confounded.uns["synthetic"]["true_delta"]
    offset = confounded.uns["synthetic"]["context_offset"].loc["ctx1"].to_numpy()
    errors = {}
    for label, kwargs in (("plain", {}), ("matched", {"context_key": "context"})):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ControlCompositionWarning)
            dataset = read(confounded, **kwargs)
        singles = [name for name in dataset.conditions if "+" not in name and name != "ctrl"]
        delta = dataset.mean_expression(singles) - dataset.control_expression().mean(axis=0)
        residual = delta.to_numpy() - truth.loc[singles].to_numpy()  # (singles, G)
        # How much of the residual lines up with the context offset, shared by every single.
        errors[label] = float(np.abs(residual.mean(axis=0) @ offset) / (offset @ offset))
    assert errors["plain"] > 0.15 and errors["matched"] < 0.05, errors


def test_registered_style_datasets_can_be_matched_after_reading(confounded):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ControlCompositionWarning)
        dataset = read(confounded)
    matched = match_control_cells(dataset, context_key="context")
    assert "control_matching" in matched.adata.uns["perturbflow"]
    assert "control_matching" not in dataset.adata.uns["perturbflow"]  # the input is untouched
    with pytest.raises(DataValidationError, match="needs context_key"):
        match_control_cells(dataset)


def test_read_refuses_a_context_without_control_cells(confounded):
    adata = confounded.copy()
    adata.obs["context"] = adata.obs["context"].astype(str)
    adata.obs.loc[adata.obs["condition"] == "G0006", "context"] = "ctx2"
    with pytest.raises(DataValidationError, match=r"\['ctx2'\] have no control cells"):
        read(adata, context_key="context")


def test_a_column_whose_control_levels_are_its_own_is_not_a_covariate():
    """``gene_cellline`` labels vary within a gene's cells but restate the condition."""
    conditions = pd.Series(["ctrl"] * 40 + ["A"] * 40)
    is_control = (conditions == "ctrl").to_numpy()
    line = np.array(["x", "y"] * 40)
    obs = pd.DataFrame({"condition_line": conditions.to_numpy() + "_" + line})
    assert composition_imbalance(obs, is_control, conditions) == []
