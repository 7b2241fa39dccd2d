"""Norman 2019 genetic-interaction scores: planted doubles with known coefficients, distance
correlation against hand-computed values, tables, comparisons and the published reference."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import cdist

from perturbflow.eval import gi
from perturbflow.eval.gi import (
    COMPARISON_COLUMNS,
    GI_SCORE_COLUMNS,
    GIError,
    GIReferenceError,
    compare_gi,
    compare_with_reference,
    distance_correlation,
    fit_gi,
    gi_table,
    load_norman_reference,
)


def _shared_data_dir() -> Path:
    configured = os.environ.get("PERTURBFLOW_DATA_DIR")
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


DATA_DIR = _shared_data_dir()
REFERENCE_CSV = DATA_DIR / "norman2019_metadata" / gi.NORMAN_REFERENCE_FILE
DEVEL_H5AD = DATA_DIR / "perturbench_devel" / "devel.h5ad"
needs_reference = pytest.mark.skipif(
    not REFERENCE_CSV.is_file(),
    reason=f"Norman 2019 GI table not available at {REFERENCE_CSV} (shared data absent)",
)


def _singles(seed: int, n_genes: int = 300) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(0.0, 1.0, n_genes), rng.normal(0.0, 1.0, n_genes)  # (G,), (G,)


def _naive_dcor(x: np.ndarray, y: np.ndarray) -> float:
    """Textbook distance correlation with explicit double-centred G × G matrices."""

    def centred(values: np.ndarray) -> np.ndarray:
        values = values[:, None] if values.ndim == 1 else values
        d = cdist(values, values)  # (G, G)
        return d - d.mean(axis=0) - d.mean(axis=1, keepdims=True) + d.mean()

    a, b = centred(x), centred(y)
    return math.sqrt((a * b).mean() / math.sqrt((a * a).mean() * (b * b).mean()))


# --- fit_gi: planted doubles ----------------------------------------------------------------


def test_planted_additive_double_recovers_coefficients_exactly():
    delta_a, delta_b = _singles(0)
    scores = fit_gi(delta_a, delta_b, 0.7 * delta_a + 1.3 * delta_b)

    assert scores.ts_coef == pytest.approx((0.7, 1.3), abs=1e-8)
    assert scores.ls_coef == pytest.approx((0.7, 1.3), abs=1e-10)
    assert scores.magnitude == pytest.approx(math.sqrt(0.49 + 1.69))
    assert scores.ts_norm2 == scores.magnitude
    assert scores.ts_norm == pytest.approx(1.0)  # the paper's ts_norm is the mean of |c|
    assert scores.model_fit == pytest.approx(1.0)
    assert scores.score == pytest.approx(1.0)
    assert scores.ts_linear_dcor == pytest.approx(1.0)
    assert scores.dominance == pytest.approx(abs(math.log10(0.7 / 1.3)))
    assert scores.ts_ratio == pytest.approx(0.7 / 1.3)
    assert scores.n_genes == 300


def test_theil_sen_resists_outlier_genes_that_bias_least_squares():
    delta_a, delta_b = _singles(1, n_genes=400)
    delta_ab = 0.7 * delta_a + 1.3 * delta_b
    outliers = np.random.default_rng(2).choice(400, 40, replace=False)
    delta_ab[outliers] += 8.0 * np.abs(delta_a[outliers])  # 10% genes with a strong new response

    scores = fit_gi(delta_a, delta_b, delta_ab)

    assert scores.ts_coef == pytest.approx((0.7, 1.3), abs=0.05)
    assert abs(scores.coef_first - 0.7) > 0.1  # least squares is pulled by the outliers


def test_epistatic_double_has_one_coefficient_near_zero_and_high_dominance():
    delta_a, delta_b = _singles(3)
    noise = np.random.default_rng(4).normal(0.0, 0.01, delta_a.shape)
    scores = fit_gi(delta_a, delta_b, delta_a + noise)  # A masks B entirely

    assert scores.ts_coef_first == pytest.approx(1.0, abs=0.01)
    assert abs(scores.ts_coef_second) < 0.01
    assert scores.dominance > 1.5  # A's coefficient is > 30 times B's
    assert scores.dcor_first > 0.99
    assert scores.equality_of_contribution < 0.3  # B contributes little


def test_swapping_the_singles_swaps_the_coefficients_and_keeps_symmetric_scores():
    delta_a, delta_b = _singles(5)
    rng = np.random.default_rng(6)
    delta_ab = 0.4 * delta_a + 1.1 * delta_b + rng.normal(0.0, 0.2, delta_a.shape)

    forward = fit_gi(delta_a, delta_b, delta_ab)
    backward = fit_gi(delta_b, delta_a, delta_ab)

    assert backward.ts_coef == pytest.approx(forward.ts_coef[::-1], abs=1e-9)
    assert backward.ls_coef == pytest.approx(forward.ls_coef[::-1], abs=1e-12)
    assert (backward.dcor_first, backward.dcor_second) == pytest.approx(
        (forward.dcor_second, forward.dcor_first)
    )
    for name in ("ts_norm2", "ts_norm", "abs_log_ts_ratio", "corr_fit", "dcor", "dcor_ratio"):
        assert getattr(backward, name) == pytest.approx(getattr(forward, name), abs=1e-9), name


def test_synergy_and_buffering_show_in_the_magnitude():
    delta_a, delta_b = _singles(7)
    synergy = fit_gi(delta_a, delta_b, 1.8 * (delta_a + delta_b))
    buffering = fit_gi(delta_a, delta_b, 0.4 * (delta_a + delta_b))
    assert synergy.magnitude == pytest.approx(1.8 * math.sqrt(2))
    assert buffering.magnitude == pytest.approx(0.4 * math.sqrt(2))


def test_genes_unchanged_everywhere_do_not_drag_theil_sen_to_zero():
    delta_a, delta_b = _singles(8, n_genes=100)
    pad = np.zeros(300)  # sparse data: most genes are unexpressed, their deltas are exactly 0
    scores = fit_gi(
        np.r_[delta_a, pad], np.r_[delta_b, pad], np.r_[0.7 * delta_a + 1.3 * delta_b, pad]
    )
    assert scores.ts_coef == pytest.approx((0.7, 1.3), abs=1e-8)


def test_no_change_at_all_gives_nan_scores_not_an_error(caplog):
    zeros = np.zeros(20)
    with caplog.at_level(logging.WARNING, logger="perturbflow.eval.gi"):
        scores = fit_gi(zeros, zeros, zeros)
    assert math.isnan(scores.magnitude) and math.isnan(scores.model_fit)
    assert "Theil–Sen scores are nan" in caplog.text


def test_fit_gi_rejects_mismatched_or_non_finite_vectors():
    delta_a, delta_b = _singles(9)
    with pytest.raises(GIError, match="same genes"):
        fit_gi(delta_a, delta_b, delta_a[:-1])
    with pytest.raises(GIError, match="nan or inf"):
        fit_gi(delta_a, np.r_[delta_b[:-1], np.nan], delta_a)
    with pytest.raises(GIError, match="1-D"):
        fit_gi(delta_a[:, None], delta_b, delta_a)


# --- distance correlation -------------------------------------------------------------------


def test_dcor_of_identical_and_affinely_related_vectors_is_one():
    x, _ = _singles(10)
    assert distance_correlation(x, x) == pytest.approx(1.0)
    assert distance_correlation(x, 3.0 * x - 2.0) == pytest.approx(1.0)


def test_dcor_of_independent_vectors_is_near_zero():
    rng = np.random.default_rng(11)
    assert distance_correlation(rng.normal(size=2000), rng.normal(size=2000)) < 0.06


def test_dcor_equals_the_hand_computed_small_case():
    # x = (0, 1, 2), y = (0, 1, 0): double-centred distance matrices give dCov² = 8/81,
    # dVar²(x) = 40/81, dVar²(y) = 16/81, so dCor² = 8 / sqrt(640) = 1/sqrt(10).
    assert distance_correlation([0.0, 1.0, 2.0], [0.0, 1.0, 0.0]) == pytest.approx(10**-0.25)


def test_dcor_is_invariant_to_row_chunking_and_matches_the_textbook_formula(monkeypatch):
    rng = np.random.default_rng(12)
    x = rng.normal(size=(150, 2))  # (G, 2) like the paper's [delta_A, delta_B]
    y = x[:, 0] ** 2 + rng.normal(0.0, 0.5, 150)  # (G,) a non-linear dependence
    expected = _naive_dcor(x, y)
    assert distance_correlation(x, y) == pytest.approx(expected, rel=1e-10)
    monkeypatch.setattr(gi, "_CHUNK_ENTRIES", 7 * 150)  # 7-row blocks, last one partial
    assert distance_correlation(x, y) == pytest.approx(expected, rel=1e-10)


def test_dcor_of_a_constant_vector_is_nan():
    assert math.isnan(distance_correlation(np.ones(10), np.arange(10.0)))


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(min_value=0, max_value=2**32 - 1),
    scale=st.floats(min_value=0.01, max_value=100.0),
    shift=st.floats(min_value=-100.0, max_value=100.0),
)
def test_dcor_is_symmetric_bounded_and_invariant_to_scale_and_shift(seed, scale, shift):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=40)
    y = x + rng.normal(size=40)
    value = distance_correlation(x, y)
    assert 0.0 <= value <= 1.0
    assert distance_correlation(y, x) == pytest.approx(value, rel=1e-9)
    assert distance_correlation(scale * x + shift, y) == pytest.approx(value, rel=1e-6)


# --- gi_table --------------------------------------------------------------------------------


def _toy_deltas() -> pd.DataFrame:
    """Singles A, B, C (A spelled GEARS-style), doubles B+A (non-canonical) and C+D (no D)."""
    rng = np.random.default_rng(13)
    genes = [f"g{i}" for i in range(60)] + ["A", "B", "C", "D"]
    a, b, c, d = (rng.normal(size=len(genes)) for _ in range(4))
    rows = {
        "ctrl": np.zeros(len(genes)),
        "A+ctrl": a,
        "B": b,
        "C": c,
        "B+A": 0.7 * a + 1.3 * b,
        "C+D": c + d,
    }
    return pd.DataFrame(rows, index=genes).T


def test_gi_table_scores_doubles_with_both_singles_and_skips_the_rest(caplog):
    with caplog.at_level(logging.WARNING, logger="perturbflow.eval.gi"):
        table = gi_table(_toy_deltas())

    assert list(table.index) == ["A+B"]
    assert table.index.name == "condition"
    row = table.loc["A+B"]
    assert (row["gene_first"], row["gene_second"]) == ("A", "B")
    assert (row["ts_coef_first"], row["ts_coef_second"]) == pytest.approx((0.7, 1.3), abs=1e-8)
    assert set(GI_SCORE_COLUMNS) <= set(table.columns)
    assert table.attrs["gi"]["skipped"] == ["C+D"]
    assert "C+D" in caplog.text
    # The perturbed genes themselves are left out of the fit, as in the paper.
    assert row["n_genes"] == 60
    assert table.attrs["gi"]["n_excluded_targets"] == 4


def test_gi_table_restricts_to_gene_subset_and_named_doubles():
    deltas = _toy_deltas()
    table = gi_table(deltas, doubles=["A+B"], gene_subset=[f"g{i}" for i in range(20)])
    assert table.loc["A+B", "n_genes"] == 20
    kept = gi_table(deltas, exclude_targets=False)
    assert kept.loc["A+B", "n_genes"] == 64


def test_gi_table_errors_are_specific():
    deltas = _toy_deltas()
    with pytest.raises(KeyError, match="gene_subset"):
        gi_table(deltas, gene_subset=["g0", "nope"])
    with pytest.raises(KeyError, match="not a row"):
        gi_table(deltas, doubles=["A+C"])
    with pytest.raises(GIError, match="not a double"):
        gi_table(deltas, doubles=["A"])
    duplicated = pd.concat([deltas, deltas.loc[["B+A"]].rename(index={"B+A": "A+B"})])
    with pytest.raises(GIError, match="same condition"):
        gi_table(duplicated)
    broken = deltas.copy()
    broken.loc["B", "g3"] = np.nan
    with pytest.raises(GIError, match="nan or inf"):
        gi_table(broken)


def test_gi_table_with_no_scorable_double_is_empty_with_all_columns():
    table = gi_table(_toy_deltas().drop(index=["B+A"]))
    assert table.empty
    assert set(GI_SCORE_COLUMNS) <= set(table.columns)


# --- comparisons -----------------------------------------------------------------------------


def _table_of(seed: int, n_doubles: int = 12, noise: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    genes = [f"g{i}" for i in range(80)]
    rows = {f"S{i:02d}": rng.normal(size=80) for i in range(2 * n_doubles)}
    coefficient_rng = np.random.default_rng(99)  # the same planted doubles for every seed
    for i in range(n_doubles):
        a, b = rows[f"S{2 * i:02d}"], rows[f"S{2 * i + 1:02d}"]
        c_a, c_b = coefficient_rng.uniform(0.2, 2.0, 2)
        rows[f"S{2 * i:02d}+S{2 * i + 1:02d}"] = c_a * a + c_b * b + rng.normal(0, noise, 80)
    return gi_table(pd.DataFrame(rows, index=genes).T, max_subpopulation=2000)


def test_compare_gi_is_perfect_for_identical_inputs():
    table = _table_of(14)
    comparison = compare_gi(table, table)
    assert list(comparison.columns) == list(COMPARISON_COLUMNS)
    assert list(comparison["score"]) == list(gi.DEFAULT_COMPARE_SCORES)
    assert comparison["pearson"].to_numpy() == pytest.approx(1.0)
    assert comparison["spearman"].to_numpy() == pytest.approx(1.0)
    assert (comparison["n_doubles"] == 12).all()


def test_compare_gi_tracks_the_same_doubles_measured_with_noise():
    real = _table_of(15)
    noisy = _table_of(15, noise=0.3)
    comparison = compare_gi(noisy, real, ["ts_norm2"]).set_index("score")
    assert 0.8 < comparison.loc["ts_norm2", "pearson"] < 1.0


def test_compare_gi_needs_three_shared_finite_doubles_and_known_columns():
    table = _table_of(16)
    few = compare_gi(table.iloc[:2], table, ["ts_norm2"])
    assert few.loc[0, "n_doubles"] == 2 and math.isnan(few.loc[0, "pearson"])
    with pytest.raises(KeyError, match="lacks score"):
        compare_gi(table, table, ["not_a_score"])


def _flipped(table: pd.DataFrame) -> pd.DataFrame:
    """The same fits written with the other gene first, as the paper's table sometimes is."""
    flipped = table.copy()
    for first, second in (*gi._FIRST_SECOND_PAIRS, ("gene_first", "gene_second")):
        flipped[[first, second]] = table[[second, first]].to_numpy()
    flipped["ts_ratio"] = 1.0 / table["ts_ratio"]
    flipped["ts_difference"] = -table["ts_difference"]
    return flipped


def test_compare_with_reference_reorients_rows_whose_first_gene_differs():
    ours = _table_of(17)
    reference = _flipped(ours)
    reference = pd.concat([reference.iloc[:6], ours.iloc[6:]])  # half flipped, half not

    comparison = compare_with_reference(ours, reference).set_index("score")

    assert comparison.attrs["n_overlap"] == 12
    for column in ("ts_coef_first", "coef_second", "dcor_first", "ts_ratio", "ts_difference"):
        assert comparison.loc[column, "pearson"] == pytest.approx(1.0), column
    assert comparison.loc["ts_norm2", "pearson"] == pytest.approx(1.0)


# --- synthetic screen ------------------------------------------------------------------------


def test_synergistic_doubles_have_larger_magnitude_than_buffering_doubles_on_the_simulator(
    simulated_screen,
):
    adata = simulated_screen("default", n_cells_per_condition=5, n_control_cells=20)
    truth = adata.uns["synthetic"]
    table = gi_table(truth["true_delta"], max_subpopulation=2000)
    types = truth["interactions"]["interaction"].reindex(table.index)
    magnitude = table["ts_norm2"].groupby(types).mean()
    assert {"synergistic", "buffering"} <= set(magnitude.index)
    assert magnitude["synergistic"] > magnitude["buffering"]
    assert magnitude["synergistic"] > magnitude["additive"] > magnitude["buffering"]


# --- the published reference -----------------------------------------------------------------


@needs_reference
def test_load_norman_reference_has_125_canonical_doubles():
    reference = load_norman_reference(DATA_DIR)
    assert reference.shape[0] == 125
    assert reference.index.is_unique and reference.index.name == "condition"
    for name, first, second in zip(
        reference.index, reference["gene_first"], reference["gene_second"], strict=True
    ):
        genes = name.split("+")
        assert genes == sorted(genes) and len(genes) == 2
        assert {first, second} == set(genes)
    # The paper's 'first' gene is kept: CDKN1B_CDKN1A is canonical CDKN1A+CDKN1B, CDKN1B first.
    assert reference.loc["CDKN1A+CDKN1B", "gene_first"] == "CDKN1B"
    ts = reference[["ts_coef_first", "ts_coef_second"]].to_numpy()
    assert reference["ts_norm2"].to_numpy() == pytest.approx(np.hypot(ts[:, 0], ts[:, 1]))
    assert reference["ts_norm"].to_numpy() == pytest.approx(np.abs(ts).mean(axis=1))
    assert reference["dcor_ratio"].between(0.0, 1.0).all()
    assert Path(reference.attrs["source"]).name == gi.NORMAN_REFERENCE_FILE
    # The folder itself and the CSV path work too.
    assert load_norman_reference(REFERENCE_CSV.parent).shape == reference.shape
    assert load_norman_reference(REFERENCE_CSV).shape == reference.shape


@needs_reference
def test_reference_compared_with_itself_is_perfect_on_every_shared_score():
    reference = load_norman_reference(DATA_DIR)
    comparison = compare_with_reference(reference, reference)
    assert comparison.attrs["n_overlap"] == 125
    assert comparison["pearson"].to_numpy() == pytest.approx(1.0)


def test_load_norman_reference_names_the_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=gi.NORMAN_REFERENCE_FILE):
        load_norman_reference(tmp_path)


def test_load_norman_reference_rejects_a_malformed_table(tmp_path):
    path = tmp_path / gi.NORMAN_REFERENCE_FILE
    pd.DataFrame({"ts_coef_first": [1.0]}, index=pd.Index(["A_B"], name="name")).to_csv(path)
    with pytest.raises(GIReferenceError, match="missing"):
        load_norman_reference(tmp_path)
    columns = {"ts_coef_first": [1.0], "ts_coef_second": [1.0]}
    columns |= {"dcor_first": [0.5], "dcor_second": [0.5]}
    pd.DataFrame(columns, index=pd.Index(["A_B_C"], name="name")).to_csv(path)
    with pytest.raises(GIReferenceError, match="A_B_C"):
        load_norman_reference(tmp_path)


@pytest.mark.skipif(
    not (REFERENCE_CSV.is_file() and DEVEL_H5AD.is_file()),
    reason=f"shared Norman 2019 data not available under {DATA_DIR}",
)
def test_real_norman_subset_end_to_end_overlaps_the_reference():
    import anndata as ad

    adata = ad.read_h5ad(DEVEL_H5AD)
    adata = adata[adata.obs["dataset"] == "norman19"]
    expression = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
    labels = adata.obs["condition"].astype(str).to_numpy()
    means = pd.DataFrame(expression, columns=adata.var_names).groupby(labels).mean()
    deltas = means.drop(index="control") - means.loc["control"]

    table = gi_table(deltas)
    comparison = compare_with_reference(table, load_norman_reference(DATA_DIR))

    # PROVENANCE.md: 5 of the 15 doubles have both singles; all 5 are in the paper's 125.
    assert len(table) == 5 and len(table.attrs["gi"]["skipped"]) == 10
    assert comparison.attrs["n_overlap"] == 5
    assert (comparison["n_doubles"] == 5).all()
