"""Gene programs and gene embeddings."""

from perturbflow.programs.embeddings import correlation_embedding
from perturbflow.programs.genesets import (
    GeneSetFileNotFoundError,
    GeneSetFormatError,
    gene_sets_to_membership,
    read_gmt,
)
from perturbflow.programs.grc import (
    GenePrograms,
    GRCConfig,
    GRCInputError,
    balanced_capacities,
    gene_relation_clustering,
    random_programs,
    round_transport,
)
from perturbflow.programs.relations import (
    RelationInputError,
    adjacency_from_edges,
    adjacency_from_gene_sets,
    coexpression_knn_graph,
)

__all__ = [
    "GRCConfig",
    "GRCInputError",
    "GenePrograms",
    "GeneSetFileNotFoundError",
    "GeneSetFormatError",
    "RelationInputError",
    "adjacency_from_edges",
    "adjacency_from_gene_sets",
    "balanced_capacities",
    "coexpression_knn_graph",
    "correlation_embedding",
    "gene_relation_clustering",
    "gene_sets_to_membership",
    "random_programs",
    "read_gmt",
    "round_transport",
]
