"""Gene embeddings computed from expression data (the default when no prior table is given)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def correlation_embedding(
    expression: np.ndarray, genes: pd.Index, n_components: int = 32
) -> pd.DataFrame:
    """Embed genes by the leading eigenvectors of their Pearson correlation matrix.

    ``expression`` is ``(cells, genes)``; the result is ``(genes, n_components)``, each row a
    gene, scaled by the square root of its eigenvalue (so dot products approximate correlations).
    Constant genes get a zero row. Deterministic: eigenvector signs are fixed so that the largest
    absolute entry of each is positive.
    """
    expression = np.asarray(expression, dtype=np.float64)  # (N, G)
    centred = expression - expression.mean(axis=0)
    scale = centred.std(axis=0)
    standardised = np.divide(centred, scale, out=np.zeros_like(centred), where=scale > 0)
    correlation = standardised.T @ standardised / max(len(expression), 1)  # (G, G)
    eigenvalues, eigenvectors = np.linalg.eigh(correlation)
    order = np.argsort(eigenvalues)[::-1][: min(n_components, len(genes))]
    vectors = eigenvectors[:, order]  # (G, k)
    signs = np.sign(vectors[np.abs(vectors).argmax(axis=0), np.arange(vectors.shape[1])])
    vectors = vectors * np.where(signs == 0, 1.0, signs)
    embedding = vectors * np.sqrt(np.clip(eigenvalues[order], 0.0, None))
    columns = [f"pc{i}" for i in range(embedding.shape[1])]
    return pd.DataFrame(embedding, index=pd.Index(genes), columns=columns)
