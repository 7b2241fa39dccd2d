"""Gene relation graphs for GRC (docs/method.md §2.1 step 2).

Every source returns the same thing: a binary, symmetric ``(genes, genes)`` adjacency as a
``scipy.sparse.csr_matrix`` of booleans with an empty diagonal, rows and columns in the order of
the ``genes`` argument.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from perturbflow.programs.genesets import _gene_positions

logger = logging.getLogger(__name__)

EDGE_COLUMNS = ("gene_a", "gene_b")
SCORE_COLUMN = "score"
# Rows of the gene–gene correlation computed at once; bounds memory at _CHUNK_GENES × n_genes.
_CHUNK_GENES = 1024


class RelationInputError(ValueError):
    """Inputs to a relation graph are malformed or do not match the genes; the message says how."""


def coexpression_knn_graph(
    expression: np.ndarray | sp.spmatrix, genes: Sequence[str], k: int = 10
) -> sp.csr_matrix:
    """Symmetrised k-nearest-neighbour graph on absolute gene–gene Pearson correlation.

    ``expression`` is ``(cells, genes)``. Each gene links to the ``k`` genes it correlates with
    most strongly (in absolute value); the graph is the union of these links in both directions.
    Constant genes correlate with nothing and get no links. ``k`` is capped at ``n_genes - 1``.
    Use training cells only: the graph must not see test cells.
    """
    gene_index = _gene_positions(genes)
    n_genes = len(gene_index)
    if sp.issparse(expression):
        expression = expression.toarray()
    expression = np.asarray(expression, dtype=np.float64)  # (N, G)
    if expression.ndim != 2 or expression.shape[1] != n_genes:
        raise RelationInputError(
            f"expression must be (cells, genes) with {n_genes} gene columns, "
            f"got shape {expression.shape}"
        )
    if expression.shape[0] < 2:
        raise RelationInputError("expression needs at least 2 cells to compute correlations")
    if not np.isfinite(expression).all():
        raise RelationInputError("expression contains NaN or infinite values")
    if k < 1:
        raise RelationInputError(f"k must be at least 1, got {k}")
    k = min(k, n_genes - 1)
    if k == 0:
        return sp.csr_matrix((n_genes, n_genes), dtype=bool)

    centred = expression - expression.mean(axis=0)  # (N, G)
    scale = np.linalg.norm(centred, axis=0)  # (G,)
    unit = np.divide(centred, scale, out=np.zeros_like(centred), where=scale > 0)  # (N, G)
    rows, cols = [], []
    for start in range(0, n_genes, _CHUNK_GENES):
        stop = min(start + _CHUNK_GENES, n_genes)
        strength = np.abs(unit[:, start:stop].T @ unit)  # (chunk, G)
        strength[np.arange(stop - start), np.arange(start, stop)] = -1.0  # never self
        nearest = np.argpartition(-strength, k - 1, axis=1)[:, :k]  # (chunk, k)
        keep = np.take_along_axis(strength, nearest, axis=1) > 0  # (chunk, k)
        rows.append(np.repeat(np.arange(start, stop), k)[keep.ravel()])
        cols.append(nearest.ravel()[keep.ravel()])
    adjacency = _symmetric_adjacency(np.concatenate(rows), np.concatenate(cols), n_genes)
    logger.info(
        "co-expression kNN graph (k=%d): %d edges over %d genes", k, adjacency.nnz // 2, n_genes
    )
    return adjacency


def adjacency_from_edges(
    edges: pd.DataFrame, genes: Sequence[str], min_score: float | None = None
) -> sp.csr_matrix:
    """Adjacency from an edge list (e.g. STRING PPI) with columns ``gene_a``, ``gene_b``.

    With ``min_score`` only edges whose ``score`` column is at least ``min_score`` are kept
    (scBIG used STRING combined score ≥ 700). Edges touching genes outside ``genes`` and
    self-loops are dropped; the coverage is logged. Raises :class:`RelationInputError` when a
    column is missing or no edge joins two of ``genes``.
    """
    gene_index = _gene_positions(genes)
    required = list(EDGE_COLUMNS) + ([SCORE_COLUMN] if min_score is not None else [])
    missing = [column for column in required if column not in edges.columns]
    if missing:
        why = f" (needed because min_score={min_score})" if SCORE_COLUMN in missing else ""
        raise RelationInputError(
            f"edge table is missing column(s) {missing}{why}; it has {list(edges.columns)}"
        )
    table = edges
    if min_score is not None:
        scores = pd.to_numeric(table[SCORE_COLUMN], errors="coerce")
        if scores.isna().any():
            raise RelationInputError(
                f"edge column {SCORE_COLUMN!r} has {int(scores.isna().sum())} non-numeric values"
            )
        table = table[scores.to_numpy() >= min_score]
    gene_a = table[EDGE_COLUMNS[0]].astype(str).map(gene_index)
    gene_b = table[EDGE_COLUMNS[1]].astype(str).map(gene_index)
    known = (gene_a.notna() & gene_b.notna()).to_numpy()
    rows = gene_a.to_numpy()[known].astype(np.int64)
    cols = gene_b.to_numpy()[known].astype(np.int64)
    adjacency = _symmetric_adjacency(rows, cols, len(gene_index))
    if adjacency.nnz == 0:
        raise RelationInputError(
            f"no edge joins two of the {len(gene_index)} genes ({len(edges)} edges given, "
            f"{len(table)} after min_score); check that the edge table uses the same gene "
            "symbols as the data"
        )
    covered = int((adjacency.getnnz(axis=1) > 0).sum())
    logger.info(
        "edge list: kept %d of %d edges (%d after min_score); %d of %d genes (%.0f%%) have a "
        "neighbour",
        int(known.sum()),
        len(edges),
        len(table),
        covered,
        len(gene_index),
        100.0 * covered / len(gene_index),
    )
    return adjacency


def adjacency_from_gene_sets(
    gene_sets: Mapping[str, Sequence[str] | set[str]],
    genes: Sequence[str],
    max_size: int | None = None,
) -> sp.csr_matrix:
    """Pathway co-membership: two genes are linked when they share a gene set.

    Sets larger than ``max_size`` genes (counted within ``genes``) are skipped, since a huge
    set links everything to everything. Raises :class:`RelationInputError` when no set holds two
    of ``genes``.
    """
    gene_index = _gene_positions(genes)
    rows, cols = [], []
    n_used = 0
    for members in gene_sets.values():
        member_rows = np.array(
            sorted({gene_index[gene] for gene in members if gene in gene_index}), dtype=np.int64
        )
        if len(member_rows) < 2 or (max_size is not None and len(member_rows) > max_size):
            continue
        n_used += 1
        rows.append(np.repeat(member_rows, len(member_rows)))  # all ordered pairs
        cols.append(np.tile(member_rows, len(member_rows)))
    if not rows:
        raise RelationInputError(
            f"no gene set holds two or more of the {len(gene_index)} genes"
            + (f" (sets above max_size={max_size} skipped)" if max_size is not None else "")
            + "; check that the gene sets use the same gene symbols as the data"
        )
    adjacency = _symmetric_adjacency(np.concatenate(rows), np.concatenate(cols), len(gene_index))
    covered = int((adjacency.getnnz(axis=1) > 0).sum())
    logger.info(
        "gene-set co-membership: %d of %d sets used; %d edges; %d of %d genes have a neighbour",
        n_used,
        len(gene_sets),
        adjacency.nnz // 2,
        covered,
        len(gene_index),
    )
    return adjacency


def _symmetric_adjacency(rows: np.ndarray, cols: np.ndarray, n_genes: int) -> sp.csr_matrix:
    """Binary symmetric ``(n_genes, n_genes)`` CSR matrix from index pairs, diagonal removed."""
    off_diagonal = rows != cols
    rows, cols = rows[off_diagonal], cols[off_diagonal]
    both_rows = np.concatenate([rows, cols])  # (2E,)
    both_cols = np.concatenate([cols, rows])  # (2E,)
    counts = np.ones(len(both_rows), dtype=np.int64)  # duplicates are summed, then binarised
    adjacency = sp.csr_matrix((counts, (both_rows, both_cols)), shape=(n_genes, n_genes))
    adjacency.sum_duplicates()
    return adjacency.astype(bool)
