"""How biologically meaningful gene programs are (docs/method.md §2.1 step 5).

Pure functions of programs and prior knowledge, long-format outputs:

- :func:`program_enrichment`: hypergeometric over-representation of every gene set in every
  program, Benjamini–Hochberg FDR over all tests; :func:`enrichment_summary` condenses it.
- :func:`ppi_edge_density`: within-program edge density of a relation graph (e.g. STRING)
  against label-shuffled programs of the same sizes.

Gene symbols are matched exactly: harmonise gene sets and graphs onto the dataset's genes first
(:func:`~perturbflow.programs.priors.tables.harmonise_symbols`).
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.stats import false_discovery_control, hypergeom

from perturbflow.programs.genesets import _gene_positions
from perturbflow.programs.grc import (
    _DEFAULT_SHUFFLES,
    GenePrograms,
    _as_adjacency,
    within_program_edges,
)

logger = logging.getLogger(__name__)

__all__ = [
    "ENRICHMENT_COLUMNS",
    "ProgramQualityError",
    "benjamini_hochberg",
    "enrichment_summary",
    "ppi_edge_density",
    "program_enrichment",
]

ENRICHMENT_COLUMNS = (
    "program",
    "gene_set",
    "overlap",
    "program_size",
    "set_size",
    "universe_size",
    "expected",
    "fold_enrichment",
    "p_value",
    "fdr",
    "overlap_genes",
)
MIN_SET_SIZE = 3
OVERLAP_SEPARATOR = ";"


class ProgramQualityError(ValueError):
    """Inputs to a program-quality measure are empty or share no gene; the message says how."""


def program_enrichment(
    programs: GenePrograms | Mapping[Hashable, Iterable[str]],
    gene_sets: Mapping[str, Iterable[str]],
    universe: Sequence[str] | None = None,
    *,
    min_set_size: int = MIN_SET_SIZE,
    max_set_size: int | None = None,
) -> pd.DataFrame:
    """Over-representation of each gene set in each program (one-sided hypergeometric test).

    ``programs`` is a :class:`~perturbflow.programs.grc.GenePrograms` (programs ``0 … K-1``;
    empty ones are skipped) or a mapping from a program name to its genes. ``universe`` is the
    background the programs are compared against (default: all the programs' genes). Programs
    and gene sets are both restricted to it, so passing the genes a library annotates gives the
    usual annotated background; a program left with no universe gene keeps its rows (size 0,
    p = 1) so that it still counts as not enriched. Sets with fewer than ``min_set_size`` (or
    more than ``max_set_size``) universe genes are not tested.

    Every (program, set) pair is tested, overlap 0 included, so the number of tests — and hence
    the FDR — does not depend on how the programs happen to overlap the sets. Returns one row per
    test with :data:`ENRICHMENT_COLUMNS`: ``p_value = P(X >= overlap)`` for
    ``X ~ Hypergeom(universe_size, set_size, program_size)``, ``fdr`` Benjamini–Hochberg over
    all rows, ``overlap_genes`` ``;``-joined in universe order. Rows are sorted by program, then
    p-value. ``attrs["perturbflow"]`` records the sizes and settings.
    """
    if min_set_size < 1:
        raise ValueError(f"min_set_size must be at least 1, got {min_set_size}")
    if max_set_size is not None and max_set_size < min_set_size:
        raise ValueError(f"max_set_size ({max_set_size}) must be at least {min_set_size}")
    members = _program_members(programs)
    if universe is None:
        universe = list(dict.fromkeys(gene for genes in members.values() for gene in genes))
    gene_index = _gene_positions(universe)
    outside = sorted({gene for genes in members.values() for gene in genes} - set(gene_index))
    if outside:
        logger.info(
            "program enrichment: %d program genes outside the universe are left out, e.g. %s",
            len(outside),
            outside[:5],
        )
        members = {
            name: [gene for gene in genes if gene in gene_index] for name, genes in members.items()
        }
    if not any(members.values()):
        raise ProgramQualityError(
            f"no program gene lies in the universe of {len(gene_index)} genes (e.g. "
            f"{list(gene_index)[:5]}); check that both use the same gene symbols"
        )
    if not gene_sets:
        raise ProgramQualityError("gene_sets is empty; pass {set name: [genes]} (e.g. a GMT)")
    set_names, set_rows = _restrict_sets(gene_sets, gene_index, min_set_size, max_set_size)

    n_universe = len(gene_index)
    program_names = list(members)
    program_matrix = _membership(
        [[gene_index[gene] for gene in genes] for genes in members.values()], n_universe
    )  # (P, U)
    set_matrix = _membership(set_rows, n_universe)  # (S, U)
    overlap = np.asarray((program_matrix @ set_matrix.T).todense(), dtype=np.int64)  # (P, S)
    program_size = np.asarray(program_matrix.sum(axis=1), dtype=np.int64)  # (P, 1)
    set_size = np.asarray(set_matrix.sum(axis=1), dtype=np.int64).T  # (1, S)
    p_value = hypergeom.sf(overlap - 1, n_universe, set_size, program_size)  # (P, S)
    p_value = np.clip(p_value, 0.0, 1.0)
    expected = program_size * set_size / n_universe  # (P, S)
    fold = np.divide(overlap, expected, out=np.full(expected.shape, np.nan), where=expected > 0)

    table = pd.DataFrame(
        {
            "program": np.repeat(np.asarray(program_names, dtype=object), len(set_names)),
            "gene_set": np.tile(np.asarray(set_names, dtype=object), len(program_names)),
            "overlap": overlap.ravel(),
            "program_size": np.broadcast_to(program_size, overlap.shape).ravel(),
            "set_size": np.broadcast_to(set_size, overlap.shape).ravel(),
            "universe_size": n_universe,
            "expected": expected.ravel(),
            "fold_enrichment": fold.ravel(),
            "p_value": p_value.ravel(),
        }
    )
    table["fdr"] = benjamini_hochberg(table["p_value"].to_numpy())
    table["overlap_genes"] = _overlap_genes(program_matrix, set_matrix, overlap, list(gene_index))
    table = table.sort_values(["p_value", "gene_set"], kind="stable")
    program_position = {name: position for position, name in enumerate(program_names)}
    table = table.sort_values(
        "program", key=lambda column: column.map(program_position), kind="stable"
    )
    table = table.reset_index(drop=True)
    table.attrs["perturbflow"] = {
        "program_enrichment": {
            "n_programs": len(program_names),
            "n_gene_sets": len(gene_sets),
            "n_sets_tested": len(set_names),
            "universe_size": n_universe,
            "min_set_size": min_set_size,
            "max_set_size": max_set_size,
            "test": "hypergeometric (one-sided), Benjamini-Hochberg over all tests",
        }
    }
    logger.info(
        "program enrichment: %d programs × %d of %d gene sets (%d–%s universe genes) over %d "
        "genes; %d tests with FDR < 0.05",
        len(program_names),
        len(set_names),
        len(gene_sets),
        min_set_size,
        max_set_size if max_set_size is not None else "any",
        n_universe,
        int((table["fdr"] < 0.05).sum()),
    )
    return table


def benjamini_hochberg(p_values: np.ndarray | Sequence[float]) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values ``(m,)`` of ``p_values`` ``(m,)`` (``q_i =
    min_{j: p_j >= p_i} p_j · m / rank_j``, capped at 1)."""
    p_values = np.asarray(p_values, dtype=np.float64)
    if p_values.ndim != 1 or len(p_values) == 0:
        raise ProgramQualityError(f"p_values must be a non-empty 1-D array, got {p_values.shape}")
    if not ((p_values >= 0) & (p_values <= 1)).all():
        raise ProgramQualityError("p_values must lie in [0, 1] (and not be NaN)")
    return false_discovery_control(p_values, method="bh")


def enrichment_summary(table: pd.DataFrame, alpha: float = 0.05) -> dict[str, float]:
    """Condense a :func:`program_enrichment` table.

    Returns ``n_programs``, ``n_tests``, ``n_significant_tests`` (FDR < ``alpha``),
    ``n_enriched_programs`` and ``fraction_enriched`` (programs with at least one such hit) and
    ``median_best_neg_log10_fdr`` (over programs, of ``-log10`` of each program's smallest FDR;
    FDRs of 0 are clipped to the smallest positive float).
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    missing = [column for column in ("program", "fdr") if column not in table.columns]
    if missing:
        raise ProgramQualityError(
            f"enrichment table lacks column(s) {missing}; pass the output of program_enrichment"
        )
    if table.empty:
        raise ProgramQualityError("enrichment table is empty: no test to summarise")
    best = table.groupby("program", sort=False)["fdr"].min()  # (P,)
    best_score = -np.log10(np.clip(best.to_numpy(np.float64), np.finfo(np.float64).tiny, 1.0))
    enriched = int((best < alpha).sum())
    return {
        "n_programs": int(len(best)),
        "n_tests": int(len(table)),
        "n_significant_tests": int((table["fdr"] < alpha).sum()),
        "n_enriched_programs": enriched,
        "fraction_enriched": enriched / len(best),
        "median_best_neg_log10_fdr": float(np.median(best_score)),
    }


def ppi_edge_density(
    programs: GenePrograms,
    adjacency: np.ndarray | sp.spmatrix | pd.DataFrame,
    n_shuffles: int = _DEFAULT_SHUFFLES,
    seed: int = 0,
) -> dict[str, float]:
    """Within-program edge density of a relation graph against label-shuffled programs.

    ``adjacency`` is ``(G, G)`` in the order of ``programs.genes`` (a gene-labelled DataFrame
    is aligned; edges are symmetrised and binarised). Shuffling permutes the program labels,
    keeping the sizes, with the same random stream as
    :meth:`~perturbflow.programs.grc.GenePrograms.edge_enrichment`, so ``ratio`` equals it.
    Returns:

    - ``density_within``: edges inside programs / gene pairs inside programs;
    - ``density_shuffled_mean``, ``density_shuffled_sd``: the same over ``n_shuffles`` shuffles;
    - ``ratio``: ``density_within / density_shuffled_mean`` (1: no enrichment; ``inf`` when no
      shuffle put an edge inside a program);
    - ``z_score``: ``(density_within - mean) / sd`` (``nan`` when ``sd`` is 0);
    - ``p_value``: empirical, ``(1 + #{shuffled >= observed}) / (1 + n_shuffles)``;
    - ``graph_density`` (edges / all gene pairs), ``n_edges``, ``n_edges_within``,
      ``n_pairs_within``, ``n_genes``, ``n_shuffles``, ``seed``.
    """
    if n_shuffles < 1:
        raise ValueError(f"n_shuffles must be at least 1, got {n_shuffles}")
    relation = _as_adjacency(adjacency, programs.genes)
    upper = sp.triu(relation, k=1).tocoo()
    n_genes = programs.n_genes
    if upper.nnz == 0:
        raise ProgramQualityError(
            f"the relation graph has no edge among the programs' {n_genes} genes; check that it "
            "uses the same gene symbols (harmonise it onto the dataset's genes first)"
        )
    sizes = np.bincount(programs.labels, minlength=programs.n_clusters)  # (K,)
    n_pairs_within = int((sizes * (sizes - 1) // 2).sum())
    if n_pairs_within == 0:
        raise ProgramQualityError("every program has fewer than 2 genes: no pair to test")
    observed, shuffled = within_program_edges(programs.labels, upper, n_shuffles, seed)
    mean = shuffled.mean()
    sd = shuffled.std(ddof=1) if n_shuffles > 1 else 0.0
    if mean > 0:
        ratio = observed / mean
    else:
        ratio = float("inf") if observed else float("nan")
    return {
        "density_within": observed / n_pairs_within,
        "density_shuffled_mean": mean / n_pairs_within,
        "density_shuffled_sd": sd / n_pairs_within,
        "ratio": float(ratio),
        "z_score": float((observed - mean) / sd) if sd > 0 else float("nan"),
        "p_value": float((1 + np.count_nonzero(shuffled >= observed)) / (1 + n_shuffles)),
        "graph_density": upper.nnz / (n_genes * (n_genes - 1) / 2),
        "n_edges": int(upper.nnz),
        "n_edges_within": observed,
        "n_pairs_within": n_pairs_within,
        "n_genes": n_genes,
        "n_shuffles": int(n_shuffles),
        "seed": int(seed),
    }


def _program_members(
    programs: GenePrograms | Mapping[Hashable, Iterable[str]],
) -> dict[Hashable, list[str]]:
    """Non-empty programs as ``{name: [genes]}`` (genes de-duplicated, first occurrence kept)."""
    if isinstance(programs, GenePrograms):
        genes = np.asarray(programs.genes, dtype=object)
        members = {
            program: genes[programs.labels == program].tolist()
            for program in range(programs.n_clusters)
        }
    else:
        members = {
            name: list(dict.fromkeys(str(gene) for gene in genes))
            for name, genes in programs.items()
        }
    empty = [name for name, genes in members.items() if not genes]
    if empty:
        logger.info("program enrichment: skipping %d empty program(s) %s", len(empty), empty[:5])
    members = {name: genes for name, genes in members.items() if genes}
    if not members:
        raise ProgramQualityError("no program holds any gene; pass non-empty programs")
    return members


def _restrict_sets(
    gene_sets: Mapping[str, Iterable[str]],
    gene_index: Mapping[str, int],
    min_size: int,
    max_size: int | None,
) -> tuple[list[str], list[list[int]]]:
    """Names and universe positions of the sets with ``min_size``–``max_size`` universe genes."""
    names, rows = [], []
    for name, genes in gene_sets.items():
        positions = sorted({gene_index[gene] for gene in genes if gene in gene_index})
        if len(positions) < min_size or (max_size is not None and len(positions) > max_size):
            continue
        names.append(str(name))
        rows.append(positions)
    if not names:
        bounds = f"at least {min_size}" + (f" and at most {max_size}" if max_size else "")
        raise ProgramQualityError(
            f"none of the {len(gene_sets)} gene sets has {bounds} of the {len(gene_index)} "
            "universe genes; check that the gene sets use the same gene symbols as the programs "
            "(harmonise them first) or lower min_set_size"
        )
    return names, rows


def _membership(rows: list[list[int]], n_columns: int) -> sp.csr_matrix:
    """Binary ``(len(rows), n_columns)`` matrix with ones at each row's positions."""
    row_index = np.repeat(np.arange(len(rows)), [len(positions) for positions in rows])
    column_index = np.fromiter((p for positions in rows for p in positions), dtype=np.int64)
    values = np.ones(len(column_index), dtype=np.int64)
    return sp.csr_matrix((values, (row_index, column_index)), shape=(len(rows), n_columns))


def _overlap_genes(
    program_matrix: sp.csr_matrix,
    set_matrix: sp.csr_matrix,
    overlap: np.ndarray,
    genes: list[str],
) -> np.ndarray:
    """``;``-joined shared genes of every (program, set) pair, row-major ``(P * S,)``."""
    joined = np.full(overlap.size, "", dtype=object)  # (P * S,)
    set_members = [
        set(set_matrix.indices[set_matrix.indptr[s] : set_matrix.indptr[s + 1]])
        for s in range(set_matrix.shape[0])
    ]
    for program, set_index in zip(*np.nonzero(overlap), strict=True):
        program_genes = program_matrix.indices[
            program_matrix.indptr[program] : program_matrix.indptr[program + 1]
        ]
        shared = sorted(g for g in program_genes if g in set_members[set_index])
        joined[program * overlap.shape[1] + set_index] = OVERLAP_SEPARATOR.join(
            genes[g] for g in shared
        )
    return joined
