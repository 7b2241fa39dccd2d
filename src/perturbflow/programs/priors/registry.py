"""The registry of gene-embedding sources, cached on disk.

Each source turns data or prior knowledge into a ``(genes, dims)`` float table (gene symbols as
index). :func:`gene_embedding` looks a source up by name, builds it (or reads it from the disk
cache), and maps its symbols onto the dataset's genes when ``genes`` is given.

Sources (see :func:`list_embedding_sources`):

- ``data``: leading eigenvectors of the genes' correlation over training cells.
- ``go``: TF-IDF weighted gene × GO-term matrix, reduced by truncated SVD.
- ``ppi``: diffusion-map (spectral) embedding of the STRING graph's largest component.
- ``text``: GenePT-style sentence embedding of a description of each gene (symbol, NCBI full
  name, GO BP/MF term names), with the offline all-MiniLM-L6-v2 model of the ``[text]`` extra.
- ``locus`` / ``sequence``: where each gene sits in the genome and the DNA around its TSS
  (:mod:`perturbflow.programs.priors.locus`; a gene annotation, and a genome FASTA).
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
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from perturbflow.data.datasets import cache_dir as default_cache_dir
from perturbflow.programs.genesets import _gene_positions
from perturbflow.programs.priors.bundle import PriorBundle
from perturbflow.programs.priors.locus import (
    GENOME_EXTRA_HINT,
    locus_embedding,
    sequence_embedding,
)
from perturbflow.programs.priors.sources import (
    TEXT_EXTRA_HINT,
    TEXT_MODEL_PACKAGE,
    EmbeddingInputError,
    UnknownEmbeddingSourceError,
    combine_embeddings,
    correlation_embedding,
    gene_descriptions,
    go_svd_embedding,
    graph_spectral_embedding,
    load_text_model,
    text_embedding,
)
from perturbflow.programs.priors.tables import harmonise_symbols, harmonise_table

logger = logging.getLogger(__name__)

__all__ = [
    "CACHE_VERSION",
    "EMBEDDING_SOURCES",
    "EmbeddingSource",
    "gene_embedding",
    "list_embedding_sources",
]

CACHE_VERSION = 1

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
    if not sp.issparse(expression):
        expression = np.asarray(expression, dtype=np.float64)  # (N, G)
    if expression.ndim != 2 or expression.shape[1] != len(gene_index):
        raise EmbeddingInputError(
            f"expression must be (cells, genes) with {len(gene_index)} columns, got "
            f"{expression.shape}"
        )
    if sp.issparse(expression):  # digest of the stored values, without a dense copy
        csr = sp.csr_matrix(expression, dtype=np.float64)
        parts = (csr.data, csr.indices, csr.indptr, np.asarray(csr.shape))
    else:
        parts = (expression,)
    inputs = {"expression": _array_digest(*parts, gene_index.to_numpy(dtype=str))}
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


def _build_locus(
    bundle: PriorBundle,
    genes: Sequence[str] | None,
    expression: object,
    cache: _DiskCache,
    *,
    window: int = 1_000_000,
) -> pd.DataFrame:
    path = bundle.require("annotation", "the 'locus' gene embedding")
    return cache.get_or_build(
        "locus",
        {"window": window},
        {"annotation": _file_fingerprint(path)},
        lambda: locus_embedding(bundle.load_annotation(), window=window),
    )


def _build_sequence(
    bundle: PriorBundle,
    genes: Sequence[str] | None,
    expression: object,
    cache: _DiskCache,
    *,
    flank: int = 1000,
    k: int = 4,
) -> pd.DataFrame:
    annotation = bundle.require("annotation", "the 'sequence' gene embedding")
    genome = bundle.require("genome", "the 'sequence' gene embedding")
    return cache.get_or_build(
        "sequence",
        {"flank": flank, "k": k},
        {"annotation": _file_fingerprint(annotation), "genome": _file_fingerprint(genome)},
        lambda: sequence_embedding(bundle.load_annotation(), genome, flank=flank, k=k),
    )


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
            "locus",
            "chromosome, TSS position at several scales, strand and TSS density (gene annotation)",
            _build_locus,
            requires=("annotation",),
        ),
        EmbeddingSource(
            "sequence",
            "k-mer spectrum of the DNA around each TSS (gene annotation and genome FASTA; needs "
            f"the [genome] extra: {GENOME_EXTRA_HINT})",
            _build_sequence,
            requires=("annotation", "genome"),
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
