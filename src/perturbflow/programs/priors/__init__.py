"""Prior knowledge and gene embeddings, in one package.

- :mod:`~perturbflow.programs.priors.tables`: validating readers of prior files (GO, gene info,
  edges, gene sets, embedding tables) and gene-symbol harmonisation onto a dataset.
- :mod:`~perturbflow.programs.priors.bundle`: :class:`PriorBundle`, the prior files of a run.
- :mod:`~perturbflow.programs.priors.sources`: functions that turn expression or prior tables
  into gene vectors.
- :mod:`~perturbflow.programs.priors.registry`: the named, disk-cached embedding sources
  (:func:`gene_embedding`, :func:`list_embedding_sources`).
- :mod:`~perturbflow.programs.priors.resolver`: what a model's ``embedding`` option means
  (a source name, ``go+ppi``, a table path) and which relation graph it builds.
"""

from perturbflow.programs.priors.bundle import DEFAULT_GENE_SETS, PIECES, PriorBundle
from perturbflow.programs.priors.registry import (
    CACHE_VERSION,
    EMBEDDING_SOURCES,
    EmbeddingSource,
    gene_embedding,
    list_embedding_sources,
)
from perturbflow.programs.priors.resolver import (
    RELATION_GRAPHS,
    check_embedding_spec,
    is_table_path,
    prior_gene_table,
    relation_graph,
    with_data_embedding,
)
from perturbflow.programs.priors.sources import (
    EmbeddingInputError,
    TextModelUnavailableError,
    UnknownEmbeddingSourceError,
    combine_embeddings,
    correlation_embedding,
    gene_descriptions,
    go_svd_embedding,
    graph_spectral_embedding,
    load_text_model,
    text_embedding,
)
from perturbflow.programs.priors.tables import (
    EDGE_FORMATS,
    GO_ONTOLOGIES,
    Coverage,
    MissingPriorError,
    PriorCoverageError,
    PriorError,
    PriorFileNotFoundError,
    PriorFormatError,
    SymbolMapping,
    as_relation_edges,
    coverage,
    harmonise_symbols,
    harmonise_table,
    read_edges,
    read_embedding_table,
    read_gene_go,
    read_gene_info,
    read_gene_sets,
    read_go_terms,
)

__all__ = [
    "CACHE_VERSION",
    "DEFAULT_GENE_SETS",
    "EDGE_FORMATS",
    "EMBEDDING_SOURCES",
    "GO_ONTOLOGIES",
    "PIECES",
    "RELATION_GRAPHS",
    "Coverage",
    "EmbeddingInputError",
    "EmbeddingSource",
    "MissingPriorError",
    "PriorBundle",
    "PriorCoverageError",
    "PriorError",
    "PriorFileNotFoundError",
    "PriorFormatError",
    "SymbolMapping",
    "TextModelUnavailableError",
    "UnknownEmbeddingSourceError",
    "as_relation_edges",
    "check_embedding_spec",
    "combine_embeddings",
    "correlation_embedding",
    "coverage",
    "gene_descriptions",
    "gene_embedding",
    "go_svd_embedding",
    "graph_spectral_embedding",
    "harmonise_symbols",
    "harmonise_table",
    "is_table_path",
    "list_embedding_sources",
    "load_text_model",
    "prior_gene_table",
    "read_edges",
    "read_embedding_table",
    "read_gene_go",
    "read_gene_info",
    "read_gene_sets",
    "read_go_terms",
    "relation_graph",
    "text_embedding",
    "with_data_embedding",
]
