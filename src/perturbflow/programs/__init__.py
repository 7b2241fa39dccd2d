"""Gene programs and gene embeddings."""

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
from perturbflow.programs.priors import (
    PriorBundle,
    PriorError,
    correlation_embedding,
    gene_embedding,
    list_embedding_sources,
)
from perturbflow.programs.quality import (
    ProgramQualityError,
    enrichment_summary,
    ppi_edge_density,
    program_enrichment,
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
    "PriorBundle",
    "PriorError",
    "ProgramQualityError",
    "GeneSetFileNotFoundError",
    "GeneSetFormatError",
    "RelationInputError",
    "adjacency_from_edges",
    "adjacency_from_gene_sets",
    "balanced_capacities",
    "coexpression_knn_graph",
    "correlation_embedding",
    "gene_embedding",
    "gene_relation_clustering",
    "gene_sets_to_membership",
    "list_embedding_sources",
    "enrichment_summary",
    "ppi_edge_density",
    "program_enrichment",
    "random_programs",
    "read_gmt",
    "round_transport",
]
