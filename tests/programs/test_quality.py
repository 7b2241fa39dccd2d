"""Program quality: gene-set enrichment against closed forms, BH by hand, PPI density vs shuffles."""

from __future__ import annotations

from math import comb

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from perturbflow.programs import GenePrograms, random_programs
from perturbflow.programs.quality import (
    ENRICHMENT_COLUMNS,
    ProgramQualityError,
    benjamini_hochberg,
    enrichment_summary,
    ppi_edge_density,
    program_enrichment,
)


def _programs(labels: np.ndarray, prefix: str = "g") -> GenePrograms:
    """GenePrograms with genes ``g000…`` and the given labels (no embedding)."""
    labels = np.asarray(labels)
    n_clusters = int(labels.max()) + 1
    return GenePrograms(
        genes=tuple(f"{prefix}{i:03d}" for i in range(len(labels))),
        labels=labels,
        order=np.lexsort((np.arange(len(labels)), labels)),
        centroids=np.zeros((n_clusters, 0)),
        capacities=np.bincount(labels, minlength=n_clusters),
        method="test",
    )


def _cliques(labels: np.ndarray) -> sp.csr_matrix:
    """Adjacency joining every pair of genes with the same label."""
    same = np.equal.outer(labels, labels)  # (G, G)
    np.fill_diagonal(same, False)
    return sp.csr_matrix(same)


# --- enrichment ----------------------------------------------------------------------------


def test_hand_computed_hypergeometric_example():
    # 10 genes; program {a, b, c}, set {a, b, d, e}: P(X >= 2) = (C(4,2)C(6,1) + C(4,3)) / C(10,3)
    universe = list("abcdefghij")
    table = program_enrichment({"P": ["a", "b", "c"]}, {"S": ["a", "b", "d", "e"]}, universe)
    row = table.iloc[0]
    assert list(table.columns) == list(ENRICHMENT_COLUMNS)
    assert (row["overlap"], row["program_size"], row["set_size"], row["universe_size"]) == (
        2,
        3,
        4,
        10,
    )
    assert row["p_value"] == pytest.approx((comb(4, 2) * comb(6, 1) + comb(4, 3)) / comb(10, 3))
    assert row["expected"] == pytest.approx(1.2)
    assert row["fold_enrichment"] == pytest.approx(2 / 1.2)
    assert row["overlap_genes"] == "a;b"


def test_planted_program_matches_closed_form_and_survives_fdr():
    labels = np.repeat(np.arange(10), 20)  # 200 genes, 10 programs of 20
    programs = _programs(labels)
    genes = list(programs.genes)
    rng = np.random.default_rng(0)
    gene_sets = {"planted": genes[:20]}  # exactly program 0
    gene_sets |= {f"random{i}": list(rng.choice(genes, 15, replace=False)) for i in range(30)}
    table = program_enrichment(programs, gene_sets)
    hit = table[(table["program"] == 0) & (table["gene_set"] == "planted")].iloc[0]
    assert hit["overlap"] == 20
    assert hit["p_value"] == pytest.approx(1 / comb(200, 20), rel=1e-6)
    assert hit["fdr"] < 0.05
    assert len(table) == 10 * 31  # every program × every set, overlap 0 included
    assert table.loc[table["program"] == 0, "gene_set"].iloc[0] == "planted"  # sorted by p


def test_random_programs_on_random_sets_give_almost_no_hits():
    genes = [f"g{i:03d}" for i in range(300)]
    programs = random_programs(genes, 10, seed=3)
    rng = np.random.default_rng(4)
    gene_sets = {f"set{i}": list(rng.choice(genes, 20, replace=False)) for i in range(60)}
    summary = enrichment_summary(program_enrichment(programs, gene_sets))
    assert summary["n_programs"] == 10
    assert summary["n_tests"] == 600
    assert summary["fraction_enriched"] <= 0.1
    assert summary["median_best_neg_log10_fdr"] < 1.0


def test_sets_are_restricted_to_the_universe_and_small_ones_skipped():
    universe = [f"g{i}" for i in range(20)]
    gene_sets = {
        "kept": ["g0", "g1", "g2", "OUTSIDE1", "OUTSIDE2"],  # 3 universe genes
        "too_small": ["g3", "g4", "OUTSIDE3"],  # 2 universe genes
    }
    table = program_enrichment({"P": ["g0", "g1"]}, gene_sets, universe)
    assert table["gene_set"].unique().tolist() == ["kept"]
    assert table["set_size"].iloc[0] == 3
    info = table.attrs["perturbflow"]["program_enrichment"]
    assert (info["n_sets_tested"], info["n_gene_sets"], info["universe_size"]) == (1, 2, 20)
    small = program_enrichment(
        {"P": ["g0", "g1"]}, gene_sets, universe, min_set_size=2, max_set_size=2
    )
    assert small["gene_set"].unique().tolist() == ["too_small"]


def test_programs_are_restricted_to_an_explicit_universe():
    # the annotated background: "x" and "y" are unannotated and drop out of program A
    programs = {"A": ["a", "b", "x"], "B": ["y"], "C": ["c", "d"]}
    table = program_enrichment(programs, {"S": ["a", "b", "c"]}, ["a", "b", "c", "d", "e"])
    rows = table.set_index("program")
    assert rows.loc["A", "program_size"] == 2
    assert (rows.loc["B", "program_size"], rows.loc["B", "p_value"]) == (0, 1.0)
    assert np.isnan(rows.loc["B", "fold_enrichment"])
    assert rows.loc["A", "p_value"] == pytest.approx(comb(3, 2) / comb(5, 2))
    assert enrichment_summary(table)["n_programs"] == 3


def test_default_universe_is_the_program_genes():
    programs = {"A": ["a", "b", "c"], "B": ["d", "e", "f"]}
    table = program_enrichment(programs, {"S": ["a", "b", "c", "x"]})
    assert set(table["universe_size"]) == {6}
    assert table.set_index("program").loc["A", "overlap"] == 3


def test_fdr_column_is_benjamini_hochberg_of_all_p_values():
    genes = [f"g{i:02d}" for i in range(60)]
    programs = random_programs(genes, 4, seed=0)
    rng = np.random.default_rng(1)
    gene_sets = {f"s{i}": list(rng.choice(genes, 8, replace=False)) for i in range(12)}
    table = program_enrichment(programs, gene_sets)
    np.testing.assert_allclose(table["fdr"], benjamini_hochberg(table["p_value"].to_numpy()))


def test_benjamini_hochberg_by_hand():
    # sorted: 0.005·4/1 = 0.02, 0.01·4/2 = 0.02, 0.03·4/3 = 0.04, 0.04·4/4 = 0.04
    adjusted = benjamini_hochberg([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adjusted, [0.02, 0.04, 0.04, 0.02])
    # monotone step-up: 0.5·3/2 = 0.75 is capped by the larger p's 0.6·3/3 = 0.6
    np.testing.assert_allclose(benjamini_hochberg([0.1, 0.5, 0.6]), [0.3, 0.6, 0.6])


@settings(max_examples=40, deadline=None)
@given(
    n_genes=st.integers(8, 40),
    n_programs=st.integers(1, 4),
    set_sizes=st.lists(st.integers(3, 8), min_size=1, max_size=5),
    seed=st.integers(0, 1000),
)
def test_enrichment_table_invariants(n_genes, n_programs, set_sizes, seed):
    genes = [f"g{i}" for i in range(n_genes)]
    programs = random_programs(genes, min(n_programs, n_genes), seed=seed)
    rng = np.random.default_rng(seed)
    gene_sets = {
        f"s{i}": list(rng.choice(genes, size, replace=False)) for i, size in enumerate(set_sizes)
    }
    table = program_enrichment(programs, gene_sets)
    assert len(table) == programs.n_clusters * len(gene_sets)
    assert ((table["p_value"] >= 0) & (table["p_value"] <= 1)).all()
    assert (table["fdr"] >= table["p_value"] - 1e-12).all()
    assert (table["overlap"] <= np.minimum(table["program_size"], table["set_size"])).all()
    counted = table["overlap_genes"].map(lambda text: len(text.split(";")) if text else 0)
    assert (counted == table["overlap"]).all()


def test_enrichment_summary_counts_programs_with_a_hit():
    table = pd.DataFrame({"program": [0, 0, 1, 1, 2], "fdr": [0.01, 0.5, 0.2, 0.3, 0.0]})
    summary = enrichment_summary(table, alpha=0.05)
    assert summary["n_programs"] == 3
    assert summary["n_enriched_programs"] == 2  # program 2's FDR of 0 counts, clipped in the log
    assert summary["fraction_enriched"] == pytest.approx(2 / 3)
    assert summary["median_best_neg_log10_fdr"] == pytest.approx(2.0)  # median of 2, 0.70, 307.7
    assert summary["n_significant_tests"] == 2


@pytest.mark.parametrize(
    ("programs", "gene_sets", "universe", "message"),
    [
        ({}, {"S": ["a", "b", "c"]}, None, "no program holds any gene"),
        ({"P": []}, {"S": ["a", "b", "c"]}, None, "no program holds any gene"),
        ({"P": ["a", "b"]}, {}, None, "gene_sets is empty"),
        ({"P": ["a", "b"]}, {"S": ["x", "y", "z"]}, None, "none of the 1 gene sets"),
        ({"P": ["p", "q"]}, {"S": ["a", "b", "c"]}, ["a", "b", "c"], "no program gene lies"),
    ],
)
def test_enrichment_errors_are_specific(programs, gene_sets, universe, message):
    with pytest.raises(ProgramQualityError, match=message):
        program_enrichment(programs, gene_sets, universe)


def test_enrichment_summary_rejects_empty_or_foreign_tables():
    with pytest.raises(ProgramQualityError, match="empty"):
        enrichment_summary(pd.DataFrame({"program": [], "fdr": []}))
    with pytest.raises(ProgramQualityError, match="lacks column"):
        enrichment_summary(pd.DataFrame({"program": [0]}))
    with pytest.raises(ValueError, match="alpha"):
        enrichment_summary(pd.DataFrame({"program": [0], "fdr": [0.1]}), alpha=1.5)


# --- PPI edge density ----------------------------------------------------------------------


def test_planted_cliques_are_dense_and_shuffled_programs_are_not():
    labels = np.repeat(np.arange(10), 20)  # 200 genes in 10 cliques of 20
    adjacency = _cliques(labels)
    planted = ppi_edge_density(_programs(labels), adjacency, seed=0)
    assert planted["density_within"] == pytest.approx(1.0)
    assert planted["n_edges"] == 10 * comb(20, 2) == planted["n_edges_within"]
    assert planted["ratio"] > 5
    assert planted["z_score"] > 10
    assert planted["p_value"] == pytest.approx(1 / 101)
    assert planted["graph_density"] == pytest.approx(1900 / comb(200, 2))

    shuffled = random_programs(_programs(labels).genes, 10, seed=1)
    null = ppi_edge_density(shuffled, adjacency, seed=0)
    assert 0.8 < null["ratio"] < 1.25
    assert abs(null["z_score"]) < 3
    assert null["p_value"] > 0.01


def test_ratio_agrees_with_gene_programs_edge_enrichment():
    labels = np.repeat(np.arange(6), 10)
    rng = np.random.default_rng(2)
    noisy = np.triu(rng.random((60, 60)) < 0.1, k=1) | np.triu(_cliques(labels).toarray(), k=1)
    programs = random_programs(_programs(labels).genes, 6, seed=5)
    result = ppi_edge_density(programs, noisy, n_shuffles=50, seed=7)
    assert result["ratio"] == programs.edge_enrichment(noisy, seed=7, n_shuffles=50)


def test_density_is_deterministic_by_seed_and_accepts_labelled_frames():
    labels = np.repeat(np.arange(4), 10)
    programs = random_programs(_programs(labels).genes, 4, seed=0)
    adjacency = _cliques(labels)
    first = ppi_edge_density(programs, adjacency, seed=11)
    assert ppi_edge_density(programs, adjacency, seed=11) == first
    assert ppi_edge_density(programs, adjacency, seed=12) != first
    # a gene-labelled table in another order is aligned to the programs' genes
    genes = list(programs.genes)
    frame = pd.DataFrame(adjacency.toarray(), index=genes, columns=genes).iloc[::-1, ::-1]
    assert ppi_edge_density(programs, frame, seed=11) == first


def test_density_errors_are_specific():
    labels = np.repeat(np.arange(3), 4)
    programs = _programs(labels)
    with pytest.raises(ProgramQualityError, match="no edge"):
        ppi_edge_density(programs, sp.csr_matrix((12, 12)))
    singletons = _programs(np.arange(5))
    with pytest.raises(ProgramQualityError, match="fewer than 2 genes"):
        ppi_edge_density(singletons, np.ones((5, 5)))
    with pytest.raises(ValueError, match="n_shuffles"):
        ppi_edge_density(programs, _cliques(labels), n_shuffles=0)
    with pytest.raises(ValueError, match=r"\(12, 12\)"):
        ppi_edge_density(programs, np.ones((3, 3)))
