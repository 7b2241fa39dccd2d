"""Prior gene vectors and relation graphs: one resolver for every ``embedding`` choice a model takes.

A model's ``embedding`` / ``gene_embedding`` option is one of

- ``"data"``: computed from the training cells by the model itself (not handled here);
- a registered prior source (:func:`~perturbflow.programs.priors.registry.list_embedding_sources`:
  ``go``, ``ppi``, ``text``, ``concat``, ``mean``), or several joined by ``+``
  (``"go+ppi"``: each L2-normalised, concatenated, union of genes);
- a path to a gene-embedding table (CSV/TSV/parquet, gene symbols in the first column).

Prior sources are read from a :class:`~perturbflow.programs.priors.bundle.PriorBundle` found under
``priors`` (a data folder or its ``priors/``), else ``$PERTURBFLOW_DATA_DIR``, else
``../shared/data``. Symbols are harmonised onto the dataset's genes *and* its perturbed genes, so
a perturbed gene that is not measured (common in CRISPRa screens) still gets its vector.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from perturbflow.programs.priors.bundle import PriorBundle
from perturbflow.programs.priors.registry import EMBEDDING_SOURCES, gene_embedding
from perturbflow.programs.priors.sources import combine_embeddings
from perturbflow.programs.priors.tables import (
    PriorError,
    as_relation_edges,
    harmonise_table,
    read_embedding_table,
)
from perturbflow.programs.relations import adjacency_from_edges, adjacency_from_gene_sets

logger = logging.getLogger(__name__)

RELATION_GRAPHS = ("coexpression", "ppi", "regulons", "pathways")
TABLE_SUFFIXES = (".csv", ".tsv", ".txt", ".parquet", ".gz")


def is_table_path(spec: str) -> bool:
    """Whether an embedding option names a file rather than a registered source."""
    return Path(spec).suffix in TABLE_SUFFIXES or "/" in spec or Path(spec).exists()


def check_embedding_spec(spec: str, field: str) -> None:
    """Validate an embedding option at config time (the files are read at fit time)."""
    if spec == "data" or is_table_path(spec):
        return
    unknown = [part for part in spec.split("+") if part not in EMBEDDING_SOURCES]
    if unknown or not spec:
        raise ValueError(
            f"{field} must be 'data', a registered source ({', '.join(sorted(EMBEDDING_SOURCES))}),"
            f" sources joined by '+', or a path to an embedding table; got {spec!r}"
        )


def prior_gene_table(
    spec: str,
    genes: Sequence[str],
    perturbed: Iterable[str] = (),
    priors: str | Path | None = None,
) -> pd.DataFrame:
    """Gene vectors of ``spec`` for the dataset's ``genes`` and ``perturbed`` genes.

    Returns a ``(covered genes, dims)`` table; genes the source lacks are absent (the caller
    decides between an error and a fallback). Registered sources get unit-length rows (they
    differ in scale by orders of magnitude — a diffusion map of 11k genes has entries near 1e-2
    — and a ridge penalty would otherwise silence the small ones); a user's table is used as
    given. Raises :class:`PriorError` subclasses with what is missing and where it was looked for.
    """
    perturbed = sorted(set(perturbed))
    symbols = list(dict.fromkeys([*map(str, genes), *perturbed]))
    if is_table_path(spec):
        table, _ = harmonise_table(
            read_embedding_table(spec), symbols, perturbed=perturbed, source=str(spec)
        )
        return table.astype(np.float32)
    bundle = PriorBundle.discover(priors)
    parts = spec.split("+")
    # "go+ppi" is the registry's concat source; gene_embedding logs the coverage line.
    params = {"sources": tuple(parts)} if len(parts) > 1 else {}
    source = "concat" if len(parts) > 1 else spec
    table = gene_embedding(source, bundle, genes=symbols, perturbed=perturbed, **params)
    return _unit_rows(table)


def _unit_rows(table: pd.DataFrame) -> pd.DataFrame:
    values = table.to_numpy(np.float64)  # (n, d)
    norms = np.linalg.norm(values, axis=1, keepdims=True)  # (n, 1)
    unit = np.divide(values, norms, out=np.zeros_like(values), where=norms > 0)
    return pd.DataFrame(unit.astype(np.float32), index=table.index, columns=table.columns)


def with_data_embedding(prior: pd.DataFrame, data: pd.DataFrame) -> pd.DataFrame:
    """``data`` and ``prior`` vectors side by side (each row L2-normalised; zeros where absent).

    Every measured gene keeps its data-derived vector and every gene the prior covers (measured
    or not) gets the prior block, so neither source's coverage is lost.
    """
    return combine_embeddings({"data": data, "prior": prior}, "concat").astype(np.float32)


def relation_graph(
    kind: str,
    genes: Sequence[str],
    priors: str | Path | None = None,
    min_score: float | None = 700,
) -> sp.csr_matrix:
    """Binary gene × gene relation graph from prior knowledge (``ppi``/``regulons``/``pathways``).

    ``ppi``: STRING edges with ``combined_score >= min_score`` (scBIG: 700); ``regulons``:
    CollecTRI TF → target edges, symmetrised; ``pathways``: co-membership in the default gene
    sets (Reactome when present).
    """
    if kind not in RELATION_GRAPHS or kind == "coexpression":
        raise ValueError(
            f"prior relation graph must be 'ppi', 'regulons' or 'pathways', got {kind!r}"
        )
    bundle = PriorBundle.discover(priors)
    genes = list(map(str, genes))
    if kind == "pathways":
        return adjacency_from_gene_sets(bundle.load_gene_sets(), genes)
    edges = bundle.load_ppi(min_score=min_score) if kind == "ppi" else bundle.load_regulons()
    harmonised, _ = harmonise_table(
        edges,
        genes,
        columns=("source", "target"),
        gene_info=bundle.gene_info_or_none(),
        source=kind,
    )
    return adjacency_from_edges(as_relation_edges(harmonised), genes)


__all__ = [
    "RELATION_GRAPHS",
    "PriorError",
    "check_embedding_spec",
    "is_table_path",
    "prior_gene_table",
    "relation_graph",
    "with_data_embedding",
]
