"""The seeded simulator: determinism, shapes, normalisation, planted ground truth, config checks."""

from __future__ import annotations

import logging
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from perturbflow.data import read
from perturbflow.data.conditions import parse_condition
from perturbflow.data.synthetic import INTERACTION_TYPES, SyntheticConfig, simulate

SMALL = dict(
    n_genes=60,
    n_programs=4,
    n_perturbed=10,
    n_unmeasured=1,
    n_doubles=12,
    n_control_cells=200,
    n_cells_per_condition=30,
)


@pytest.fixture(scope="module")
def adata(simulated_screen) -> ad.AnnData:
    """The suite's ``small`` screen: ``SMALL`` with seed 0."""
    assert simulated_screen.settings("small") == {**SMALL, "seed": 0}
    return simulated_screen("small")


def labels(adata: ad.AnnData) -> np.ndarray:
    return adata.obs["condition"].astype(str).to_numpy()


def empirical_deltas(adata: ad.AnnData) -> pd.DataFrame:
    """Mean expression of each perturbation minus the control mean, (conditions, genes)."""
    condition = labels(adata)
    control = adata.X[condition == "ctrl"].mean(axis=0)
    truth = adata.uns["synthetic"]["true_delta"]
    rows = [adata.X[condition == name].mean(axis=0) - control for name in truth.index]
    return pd.DataFrame(np.vstack(rows), index=truth.index, columns=adata.var_names)


# --- determinism -------------------------------------------------------------------------------


def test_same_seed_gives_identical_data(adata: ad.AnnData) -> None:
    again = simulate(**SMALL, seed=0)
    np.testing.assert_array_equal(again.X, adata.X)
    np.testing.assert_array_equal(again.layers["counts"], adata.layers["counts"])
    pd.testing.assert_frame_equal(again.obs, adata.obs)
    pd.testing.assert_frame_equal(again.var, adata.var)
    pd.testing.assert_frame_equal(
        again.uns["synthetic"]["true_delta"], adata.uns["synthetic"]["true_delta"]
    )


def test_different_seed_gives_different_data(adata: ad.AnnData) -> None:
    other = simulate(**SMALL, seed=1)
    assert other.X.shape != adata.X.shape or not np.array_equal(other.X, adata.X)
    assert set(labels(other)) != set(labels(adata))


def test_config_object_and_overrides_agree(adata: ad.AnnData) -> None:
    from_config = simulate(SyntheticConfig(**SMALL, seed=0))
    np.testing.assert_array_equal(from_config.X, adata.X)
    assert adata.uns["synthetic"]["config"]["n_genes"] == SMALL["n_genes"]
    assert adata.uns["synthetic"]["config"]["seed"] == 0


# --- shapes and normalisation ------------------------------------------------------------------


def test_shapes_follow_the_config(adata: ad.AnnData) -> None:
    n_singles = SMALL["n_perturbed"] + SMALL["n_unmeasured"]
    n_conditions = n_singles + SMALL["n_doubles"]
    expected_cells = SMALL["n_control_cells"] + n_conditions * SMALL["n_cells_per_condition"]
    assert adata.shape == (expected_cells, SMALL["n_genes"])
    counts = pd.Series(labels(adata)).value_counts()
    assert counts["ctrl"] == SMALL["n_control_cells"]
    assert (counts.drop("ctrl") == SMALL["n_cells_per_condition"]).all()
    sizes = pd.Series([len(parse_condition(name)) for name in counts.index]).value_counts()
    assert sizes.to_dict() == {0: 1, 1: n_singles, 2: SMALL["n_doubles"]}
    assert adata.var["program"].between(0, SMALL["n_programs"] - 1).all()
    assert adata.var["is_target"].sum() == SMALL["n_perturbed"]


def test_x_is_log1p_cp10k_of_the_counts(adata: ad.AnnData) -> None:
    np.testing.assert_allclose(np.expm1(adata.X.astype(np.float64)).sum(axis=1), 1e4, rtol=1e-3)
    counts = adata.layers["counts"]
    np.testing.assert_allclose(
        adata.X, np.log1p(counts / counts.sum(axis=1, keepdims=True) * 1e4), rtol=1e-5, atol=1e-5
    )
    assert adata.uns["perturbflow"]["normalization"] == "log1p_cp10k"


def test_counts_are_non_negative_integers(adata: ad.AnnData) -> None:
    counts = adata.layers["counts"]
    assert counts.min() >= 0
    np.testing.assert_array_equal(counts, np.round(counts))
    assert counts.sum(axis=1).min() > 0, "a cell with no counts cannot be normalised"
    np.testing.assert_array_equal(adata.obs["n_counts"].to_numpy(), counts.sum(axis=1))


# --- ground truth ------------------------------------------------------------------------------


def test_every_double_has_a_known_interaction_type(adata: ad.AnnData) -> None:
    interactions = adata.uns["synthetic"]["interactions"]
    doubles = sorted(name for name in set(labels(adata)) if len(parse_condition(name)) == 2)
    assert sorted(interactions.index) == doubles
    assert set(interactions["interaction"]) <= set(INTERACTION_TYPES)
    for name, row in interactions.iterrows():
        assert parse_condition(name) == {row["gene_a"], row["gene_b"]}


@pytest.mark.parametrize("kind", INTERACTION_TYPES)
def test_a_single_type_mix_gives_only_that_type(kind: str) -> None:
    adata = simulate(**SMALL, seed=2, interaction_mix=((kind, 1.0),))
    assert set(adata.uns["synthetic"]["interactions"]["interaction"]) == {kind}


def test_true_delta_has_one_row_per_perturbation(adata: ad.AnnData) -> None:
    truth = adata.uns["synthetic"]["true_delta"]
    perturbations = sorted(set(labels(adata)) - {"ctrl"})
    assert sorted(truth.index) == perturbations
    assert list(truth.columns) == list(adata.var_names)
    assert np.isfinite(truth.to_numpy()).all()
    assert (truth.abs().max(axis=1) > 0.1).all(), "every perturbation should change something"


def test_empirical_deltas_follow_the_true_delta(adata: ad.AnnData) -> None:
    truth = adata.uns["synthetic"]["true_delta"]
    empirical = empirical_deltas(adata)
    correlation = pd.Series(
        {name: np.corrcoef(empirical.loc[name], truth.loc[name])[0, 1] for name in truth.index}
    )
    singles = [name for name in truth.index if len(parse_condition(name)) == 1]
    assert correlation[singles].mean() > 0.9
    assert correlation.min() > 0.5


def test_the_direct_effect_knocks_each_measured_target_down(adata: ad.AnnData) -> None:
    """Same seed without the direct effect: every measured target's own change is lower with it."""
    without = simulate(**SMALL, seed=0, direct_effect=0.0)
    truth = adata.uns["synthetic"]["true_delta"]
    baseline = without.uns["synthetic"]["true_delta"]
    targets = list(adata.var_names[adata.var["is_target"]])
    assert len(targets) == SMALL["n_perturbed"]
    own = np.array([truth.loc[gene, gene] - baseline.loc[gene, gene] for gene in targets])
    assert (own < -0.3).all()


def test_interaction_types_scale_the_double_effect() -> None:
    """Synergy amplifies, buffering damps the sum of the singles' effects (program genes)."""
    norms = {}
    for kind in ("additive", "synergistic", "buffering"):
        adata = simulate(**SMALL, seed=3, interaction_mix=((kind, 1.0),))
        truth = adata.uns["synthetic"]["true_delta"]
        doubles = [name for name in truth.index if "+" in name]
        norms[kind] = float(np.mean([np.abs(truth.loc[name]).sum() for name in doubles]))
    assert norms["buffering"] < norms["additive"] < norms["synergistic"]


def test_unmeasured_targets_are_perturbed_but_not_measured(adata: ad.AnnData) -> None:
    unmeasured = list(adata.uns["synthetic"]["unmeasured_targets"])
    assert len(unmeasured) == SMALL["n_unmeasured"]
    perturbed = set().union(*(parse_condition(name) for name in set(labels(adata))))
    for gene in unmeasured:
        assert gene not in adata.var_names
        assert gene in perturbed
        assert gene in set(labels(adata)), "each unmeasured target has its own single"


# --- invalid configs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"n_perturbed": 61}, "n_perturbed"),
        ({"interaction_mix": (("additive", 0.5), ("telepathic", 0.5))}, "interaction_mix"),
        ({"n_doubles": 56}, "n_doubles"),  # 11 perturbed genes make only 55 pairs
        ({"n_programs": 0}, "n_programs"),
        ({"interaction_mix": (("additive", 0.0),)}, "interaction_mix"),
    ],
)
def test_invalid_config_names_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        simulate(**{**SMALL, **overrides})


def test_the_largest_valid_number_of_doubles_works() -> None:
    adata = simulate(**{**SMALL, "n_doubles": 55, "n_cells_per_condition": 5})
    assert len(adata.uns["synthetic"]["interactions"]) == 55


# --- interoperability --------------------------------------------------------------------------


def test_read_accepts_the_simulation_without_warnings(
    adata: ad.AnnData, caplog: pytest.LogCaptureFixture
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with caplog.at_level(logging.WARNING):
            dataset = read(adata)
    unexpected = [r.getMessage() for r in caplog.records if "not measured" not in r.getMessage()]
    assert unexpected == []
    assert dataset.normalization == "log1p_cp10k"
    assert dataset.unmeasured_genes == frozenset(adata.uns["synthetic"]["unmeasured_targets"])
    np.testing.assert_array_equal(dataset.adata.X, adata.X)  # already normalised: left as is
    assert sorted(dataset.conditions) == sorted(set(labels(adata)))


def test_h5ad_round_trip_keeps_the_ground_truth(adata: ad.AnnData, tmp_path) -> None:
    path = tmp_path / "synthetic.h5ad"
    adata.write_h5ad(path)
    back = ad.read_h5ad(path)
    np.testing.assert_array_equal(back.X, adata.X)
    np.testing.assert_array_equal(back.layers["counts"], adata.layers["counts"])
    pd.testing.assert_frame_equal(back.obs, adata.obs)
    stored, original = back.uns["synthetic"], adata.uns["synthetic"]
    pd.testing.assert_frame_equal(stored["true_delta"], original["true_delta"])
    pd.testing.assert_frame_equal(stored["interactions"], original["interactions"])
    assert list(stored["unmeasured_targets"]) == original["unmeasured_targets"]
    np.testing.assert_array_equal(stored["program_regulation"], original["program_regulation"])
    assert stored["config"] == original["config"]
    assert back.uns["perturbflow"] == adata.uns["perturbflow"]


def _response_cells(kind):
    """Expression of the control and of one condition with the given response type."""
    adata = simulate(
        n_genes=60,
        n_programs=4,
        n_perturbed=10,
        n_unmeasured=0,
        n_doubles=4,
        n_control_cells=300,
        n_cells_per_condition=200,
        response_mix=((kind, 1.0),),
        seed=3,
    )
    labels = adata.obs["condition"].astype(str)
    condition = sorted(set(labels) - {"ctrl"})[0]
    return (
        adata,
        np.asarray(adata.X[labels == "ctrl"]),
        np.asarray(adata.X[labels == condition]),
        condition,
    )


def test_response_types_recorded_per_condition():
    adata = simulate(n_genes=60, n_programs=4, n_perturbed=10, n_doubles=6, seed=1)
    responses = adata.uns["synthetic"]["responses"]["response"]
    assert set(responses) <= {"shift", "subpopulation", "variance"}
    assert set(responses.index) == set(adata.uns["synthetic"]["true_delta"].index)


def test_subpopulation_response_is_bimodal_along_the_effect():
    adata, control, cells, condition = _response_cells("subpopulation")
    delta = adata.uns["synthetic"]["true_delta"].loc[condition].to_numpy()
    axis = delta / np.linalg.norm(delta)
    baseline = control.mean(axis=0) @ axis
    projection = cells @ axis - baseline  # per-cell response along the true effect
    responders = projection > 0.5 * (projection.max() + projection.min())
    # About half the cells respond; the others sit where control cells sit.
    assert 0.3 < responders.mean() < 0.7
    assert abs(np.median(projection[~responders])) < 0.25 * np.median(projection[responders])


def test_variance_response_widens_program_fluctuations():
    _, control, shifted, _ = _response_cells("shift")
    _, _, wide, _ = _response_cells("variance")
    assert wide.std(axis=0).mean() > 1.2 * shifted.std(axis=0).mean()


def test_unknown_response_type_names_the_field():
    with pytest.raises(ValueError, match="response_mix"):
        SyntheticConfig(response_mix=(("bimodal", 1.0),))


def test_cli_simulates_contexts(tmp_path):
    import anndata as ad
    from typer.testing import CliRunner

    from perturbflow.cli import app

    out = tmp_path / "contexts.h5ad"
    args = ["simulate", "--out", str(out), "--contexts", "3", "--genes", "40", "--singles", "6"]
    result = CliRunner().invoke(app, [*args, "--doubles", "3", "--cells", "20"])
    assert result.exit_code == 0, result.output
    assert sorted(ad.read_h5ad(out).obs["context"].unique()) == ["ctx0", "ctx1", "ctx2"]


def test_sparse_output_is_csr_with_the_dense_values_of_the_same_seed():
    options = dict(n_genes=30, n_programs=3, n_perturbed=6, n_unmeasured=0, n_doubles=4)
    options |= dict(n_control_cells=50, n_cells_per_condition=10, library_size=300.0, seed=2)
    dense, sparse = simulate(**options), simulate(sparse=True, **options)
    assert sp.isspmatrix_csr(sparse.X) and sp.isspmatrix_csr(sparse.layers["counts"])
    assert sparse.X.dtype == np.float32 and 0 < sparse.X.nnz < np.prod(sparse.shape)
    np.testing.assert_array_equal(sparse.X.toarray(), dense.X)
    np.testing.assert_array_equal(sparse.layers["counts"].toarray(), dense.layers["counts"])
    np.testing.assert_array_equal(sparse.obs["n_counts"], dense.obs["n_counts"])
