"""Relation graphs: co-expression kNN, edge lists (PPI) and gene-set co-membership."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from perturbflow.programs.relations import (
    RelationInputError,
    adjacency_from_edges,
    adjacency_from_gene_sets,
    coexpression_knn_graph,
)


def _assert_valid_adjacency(adjacency, n_genes):
    assert sp.issparse(adjacency)
    assert adjacency.shape == (n_genes, n_genes)
    assert adjacency.dtype == bool
    dense = adjacency.toarray()
    assert not dense.diagonal().any()
    assert (dense == dense.T).all()


# --- co-expression kNN --------------------------------------------------------------------------


def test_knn_graph_links_genes_of_the_same_module():
    rng = np.random.default_rng(0)
    modules = np.repeat(np.arange(4), 10)  # (G,) 4 modules × 10 genes
    activity = rng.normal(size=(200, 4))  # (N, 4)
    expression = activity[:, modules] + 0.3 * rng.normal(size=(200, 40))  # (N, G)
    genes = [f"g{i}" for i in range(40)]
    adjacency = coexpression_knn_graph(expression, genes, k=5)
    _assert_valid_adjacency(adjacency, 40)
    rows, cols = adjacency.nonzero()
    assert (modules[rows] == modules[cols]).all()
    assert (adjacency.getnnz(axis=1) >= 5).all()  # each gene keeps its own k links


def test_knn_graph_accepts_sparse_expression_and_caps_k():
    rng = np.random.default_rng(1)
    expression = rng.normal(size=(30, 5))
    dense = coexpression_knn_graph(expression, list("ABCDE"), k=50)
    sparse = coexpression_knn_graph(sp.csr_matrix(expression), list("ABCDE"), k=50)
    assert (dense != sparse).nnz == 0
    assert dense.nnz == 5 * 4  # k capped at 4: complete graph


def test_knn_graph_gives_constant_genes_no_links():
    rng = np.random.default_rng(2)
    expression = rng.normal(size=(50, 6))
    expression[:, 0] = 3.0
    adjacency = coexpression_knn_graph(expression, list("ABCDEF"), k=2)
    assert adjacency[0].nnz == 0
    assert adjacency[:, 0].nnz == 0


@pytest.mark.parametrize(
    ("expression", "genes", "k", "message"),
    [
        (np.zeros((10, 3)), list("AB"), 2, "2 gene columns"),
        (np.zeros((1, 2)), list("AB"), 1, "at least 2 cells"),
        (np.full((5, 2), np.nan), list("AB"), 1, "NaN"),
        (np.zeros((5, 2)), list("AB"), 0, "k must be"),
    ],
)
def test_knn_graph_validates_inputs(expression, genes, k, message):
    with pytest.raises(RelationInputError, match=message):
        coexpression_knn_graph(expression, genes, k=k)


# --- edge lists -----------------------------------------------------------------------------------


def test_edges_are_symmetrised_and_filtered(caplog):
    edges = pd.DataFrame(
        {
            "gene_a": ["A", "B", "C", "A", "X", "D"],
            "gene_b": ["B", "A", "C", "C", "A", "A"],
            "score": [900, 900, 999, 400, 999, 800],
        }
    )
    with caplog.at_level(logging.INFO, logger="perturbflow.programs.relations"):
        adjacency = adjacency_from_edges(edges, ["A", "B", "C", "D"], min_score=700)
    _assert_valid_adjacency(adjacency, 4)
    expected = {(0, 1), (1, 0), (0, 3), (3, 0)}  # A–B (given twice), A–D; C–C self, A–C low
    assert set(zip(*adjacency.nonzero(), strict=True)) == expected
    assert "3 of 4 genes" in caplog.text


def test_edges_without_min_score_need_no_score_column():
    edges = pd.DataFrame({"gene_a": ["A"], "gene_b": ["C"]})
    adjacency = adjacency_from_edges(edges, ["A", "B", "C"])
    assert adjacency[0, 2] and adjacency[2, 0]


def test_edges_missing_columns_are_named():
    with pytest.raises(RelationInputError, match=r"\['gene_b'\]"):
        adjacency_from_edges(pd.DataFrame({"gene_a": ["A"], "partner": ["B"]}), ["A", "B"])
    with pytest.raises(RelationInputError, match="score.*min_score"):
        adjacency_from_edges(pd.DataFrame({"gene_a": ["A"], "gene_b": ["B"]}), ["A", "B"], 700)


def test_edges_without_overlapping_genes_are_an_error():
    edges = pd.DataFrame({"gene_a": ["x", "A"], "gene_b": ["y", "z"]})
    with pytest.raises(RelationInputError, match="same gene symbols"):
        adjacency_from_edges(edges, ["A", "B"])


# --- gene sets ------------------------------------------------------------------------------------


def test_gene_sets_link_co_members():
    gene_sets = {"p1": {"A", "B", "C"}, "p2": {"C", "D", "X"}, "lonely": {"E", "Y"}}
    adjacency = adjacency_from_gene_sets(gene_sets, list("ABCDE"))
    _assert_valid_adjacency(adjacency, 5)
    dense = adjacency.toarray()
    assert dense[0, 1] and dense[0, 2] and dense[1, 2] and dense[2, 3]
    assert not dense[0, 3]  # A and D share no set
    assert not dense[4].any()


def test_gene_sets_max_size_skips_huge_sets():
    gene_sets = {"all": set("ABCD"), "pair": {"A", "B"}}
    adjacency = adjacency_from_gene_sets(gene_sets, list("ABCD"), max_size=2)
    assert adjacency.nnz == 2


def test_gene_sets_without_overlap_are_an_error():
    with pytest.raises(RelationInputError, match="same gene symbols"):
        adjacency_from_gene_sets({"s": {"x", "y"}, "t": {"A"}}, ["A", "B"])
