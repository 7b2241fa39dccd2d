"""Gene programs and gene embeddings."""

from perturbflow.programs.embeddings import correlation_embedding

__all__ = ["correlation_embedding"]
