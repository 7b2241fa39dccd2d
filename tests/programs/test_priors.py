"""Prior-knowledge readers, symbol harmonisation, coverage and the PriorBundle.

Every prior file here is a small synthetic one written into tmp_path by the test itself.
"""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from perturbflow.data.datasets import DATA_DIR_ENV, data_dir
from perturbflow.programs.priors import (
    Coverage,
    MissingPriorError,
    PriorBundle,
    PriorCoverageError,
    PriorError,
    PriorFileNotFoundError,
    PriorFormatError,
    as_relation_edges,
    harmonise_symbols,
    harmonise_table,
    read_edges,
    read_embedding_table,
    read_gene_go,
    read_gene_info,
    read_gene_sets,
    read_go_terms,
)
from perturbflow.programs.relations import adjacency_from_edges


def write_table(path: Path, header: list[str], rows: list[list[object]], sep: str = "\t") -> Path:
    """Write a delimited table (gzipped when the name ends in .gz)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(sep.join(str(value) for value in row) for row in [header, *rows]) + "\n"
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


GENE_GO_HEADER = ["gene_symbol", "entrez_id", "go_id", "ontology", "evidence"]
GENE_INFO_HEADER = ["entrez_id", "gene_symbol", "full_name", "gene_type", "aliases"]


def write_prior_folder(root: Path) -> Path:
    """A miniature ``priors/`` folder with the layout of shared/data/priors."""
    write_table(
        root / "go_orghs/gene_go.tsv.gz",
        GENE_GO_HEADER,
        [
            ["TP53", 7157, "GO:0008150", "BP", "ND"],
            ["TP53", 7157, "GO:0006915", "BP", "IDA"],
            ["TP53", 7157, "GO:0006915", "BP", "TAS"],  # same term, second evidence code
            ["TP53", 7157, "GO:0003677", "MF", "IDA"],
            ["MDM2", 4193, "GO:0006915", "BP", "IEA"],
            ["MDM2", 4193, "GO:0005634", "CC", "IDA"],
        ],
    )
    write_table(
        root / "go_orghs/gene_go_propagated.tsv.gz",
        ["gene_symbol", "go_id", "ontology"],
        [["TP53", "GO:0008150", "BP"], ["TP53", "GO:0006915", "BP"], ["MDM2", "GO:0006915", "BP"]],
    )
    write_table(
        root / "go_orghs/go_terms.tsv.gz",
        ["go_id", "name", "ontology", "definition"],
        [
            ["GO:0008150", "biological_process", "BP", "Any process."],
            ["GO:0006915", "apoptotic process", "BP", "Cell death."],
            ["GO:0003677", "DNA binding", "MF", "Binding DNA."],
            ["GO:0005634", "nucleus", "CC", "The nucleus."],
        ],
    )
    write_table(
        root / "go_orghs/gene_info.tsv.gz",
        GENE_INFO_HEADER,
        [
            [7157, "TP53", "tumor protein p53", "protein-coding", "P53|TRP53|TP53"],
            [4193, "MDM2", "MDM2 proto-oncogene", "protein-coding", "HDM2|MDM2"],
        ],
    )
    write_table(
        root / "string_v12/string_ppi_700_ntm.tsv.gz",
        ["gene1_symbol", "gene2_symbol", "combined_score", "gene1_entrez", "gene2_entrez"],
        [["TP53", "MDM2", 999, 7157, 4193]],
    )
    write_table(
        root / "collectri/collectri_human.tsv.gz",
        ["source", "target", "weight"],
        [["TP53", "MDM2", 1]],
    )
    reactome = root / "reactome/ReactomePathways.gmt"
    reactome.parent.mkdir(parents=True, exist_ok=True)
    reactome.write_text("p53 pathway\tR-HSA-1\tTP53\tMDM2\n", encoding="utf-8")
    hallmark = root / "msigdb/h.all.v7.4.symbols.gmt"
    hallmark.parent.mkdir(parents=True, exist_ok=True)
    hallmark.write_text("HALLMARK_P53\turl\tTP53\tMDM2\n", encoding="utf-8")
    return root


# --- GO annotations ------------------------------------------------------------------------------


def test_read_gene_go_drops_nd_evidence_and_collapses_evidence_codes(tmp_path):
    path = write_prior_folder(tmp_path / "priors") / "go_orghs/gene_go.tsv.gz"
    table = read_gene_go(path)
    assert list(table.columns) == ["gene", "go_id", "ontology"]
    assert "GO:0008150" not in set(table["go_id"])  # the ND root annotation
    assert len(table[(table["gene"] == "TP53") & (table["go_id"] == "GO:0006915")]) == 1
    assert len(table) == 4


def test_read_gene_go_ontology_filter_and_kept_nd(tmp_path):
    path = write_prior_folder(tmp_path / "priors") / "go_orghs/gene_go.tsv.gz"
    table = read_gene_go(path, ontologies=["bp"], drop_evidence=())
    assert set(table["ontology"]) == {"BP"}
    assert "GO:0008150" in set(table["go_id"])


def test_read_gene_go_propagated_file_has_no_evidence_column(tmp_path):
    path = write_prior_folder(tmp_path / "priors") / "go_orghs/gene_go_propagated.tsv.gz"
    table = read_gene_go(path)
    assert len(table) == 3
    assert set(table["gene"]) == {"TP53", "MDM2"}


def test_read_gene_go_missing_file(tmp_path):
    with pytest.raises(PriorFileNotFoundError, match=r"GO annotation file .*nope\.tsv\.gz"):
        read_gene_go(tmp_path / "nope.tsv.gz")
    with pytest.raises(FileNotFoundError):  # also a FileNotFoundError
        read_gene_go(tmp_path / "nope.tsv.gz")


def test_read_gene_go_wrong_columns_lists_what_the_file_has(tmp_path):
    path = write_table(
        tmp_path / "go.tsv", ["symbol", "term", "ontology"], [["TP53", "GO:1", "BP"]]
    )
    with pytest.raises(PriorFormatError, match=r"missing column\(s\) \['gene_symbol', 'go_id'\]"):
        read_gene_go(path)
    with pytest.raises(PriorFormatError, match=r"it has \['symbol', 'term', 'ontology'\]"):
        read_gene_go(path)


def test_read_gene_go_comma_file_read_as_tab_gets_a_hint(tmp_path):
    path = write_table(
        tmp_path / "go.tsv", ["gene_symbol", "go_id", "ontology"], [["TP53", "GO:1", "BP"]], ","
    )
    with pytest.raises(PriorFormatError, match="is the file really tab-separated"):
        read_gene_go(path)


def test_read_gene_go_rejects_unknown_ontology_values_and_arguments(tmp_path):
    path = write_table(
        tmp_path / "go.tsv", ["gene_symbol", "go_id", "ontology"], [["TP53", "GO:1", "XX"]]
    )
    with pytest.raises(PriorFormatError, match=r"column 'ontology' has values outside .*'XX'"):
        read_gene_go(path)
    with pytest.raises(PriorError, match="ontologies must be among"):
        read_gene_go(path, ontologies=["BP", "KEGG"])


def test_read_gene_go_empty_and_header_only_files(tmp_path):
    empty = tmp_path / "empty.tsv"
    empty.write_text("")
    with pytest.raises(PriorFormatError, match="is empty"):
        read_gene_go(empty)
    header_only = write_table(tmp_path / "header.tsv", ["gene_symbol", "go_id", "ontology"], [])
    with pytest.raises(PriorFormatError, match="has a header but no rows"):
        read_gene_go(header_only)


# --- GO terms and gene info ------------------------------------------------------------------


def test_read_go_terms_indexes_by_go_id_and_rejects_duplicates(tmp_path):
    path = write_prior_folder(tmp_path / "priors") / "go_orghs/go_terms.tsv.gz"
    terms = read_go_terms(path)
    assert terms.loc["GO:0006915", "name"] == "apoptotic process"
    duplicated = write_table(
        tmp_path / "terms.tsv",
        ["go_id", "name", "ontology"],
        [["GO:1", "a", "BP"], ["GO:1", "b", "BP"]],
    )
    with pytest.raises(PriorFormatError, match=r"go_id must be unique.*GO:1"):
        read_go_terms(duplicated)


def test_read_gene_info_keeps_symbols_that_look_like_missing_values(tmp_path):
    path = write_table(
        tmp_path / "info.tsv",
        GENE_INFO_HEADER,
        [[1, "NA", "a gene named NA", "protein-coding", ""], [2, "NULL", "", "ncRNA", "X1"]],
    )
    info = read_gene_info(path)
    assert list(info["gene_symbol"]) == ["NA", "NULL"]
    assert info["aliases"].isna().tolist() == [True, False]


def test_read_gene_info_wrong_columns(tmp_path):
    path = write_table(tmp_path / "info.tsv", ["Symbol", "description"], [["TP53", "p53"]])
    with pytest.raises(PriorFormatError, match=r"gene info file .*missing column\(s\)"):
        read_gene_info(path)


# --- edge lists ---------------------------------------------------------------------------------


def test_read_string_threshold_and_weight_scale(tmp_path):
    path = write_table(
        tmp_path / "string.tsv.gz",
        ["gene1_symbol", "gene2_symbol", "combined_score"],
        [["A", "B", 950], ["B", "C", 650], ["C", "D", 700]],
    )
    edges = read_edges(path, min_score=700)
    assert list(edges.columns) == ["source", "target", "weight"]
    assert edges[["source", "target"]].values.tolist() == [["A", "B"], ["C", "D"]]
    np.testing.assert_allclose(edges["weight"], [0.95, 0.70])
    assert edges.attrs["perturbflow"]["format"] == "string"
    assert edges.attrs["perturbflow"]["directed"] is False


def test_read_dorothea_confidence_filter_and_signed_weights(tmp_path):
    path = write_table(
        tmp_path / "dorothea.tsv.gz",
        ["tf", "confidence", "target", "mor"],
        [["TF1", "A", "G1", 1], ["TF1", "E", "G2", 1], ["TF2", "C", "G3", -1]],
    )
    edges = read_edges(path, confidence="abc")
    assert edges.values.tolist() == [["TF1", "G1", 1.0], ["TF2", "G3", -1.0]]
    assert edges.attrs["perturbflow"]["directed"] is True
    with pytest.raises(PriorError, match="min_score does not apply.*confidence='ABC'"):
        read_edges(path, min_score=1)
    with pytest.raises(PriorError, match="confidence must be letters"):
        read_edges(path, confidence="AZ")


def test_read_dorothea_rejects_unknown_confidence_levels_in_the_file(tmp_path):
    path = write_table(
        tmp_path / "dorothea.tsv", ["tf", "confidence", "target", "mor"], [["TF1", "F", "G1", 1]]
    )
    with pytest.raises(PriorFormatError, match=r"column 'confidence' has values outside"):
        read_edges(path)


def test_read_collectri_min_score_on_absolute_weight(tmp_path):
    path = write_table(
        tmp_path / "collectri.tsv.gz",
        ["source", "target", "weight"],
        [["TF1", "G1", 1], ["TF1", "G2", -1], ["TF2", "G3", 0.2]],
    )
    edges = read_edges(path, min_score=0.5)
    assert edges["weight"].tolist() == [1.0, -1.0]
    with pytest.raises(PriorError, match="confidence applies to DoRothEA files only"):
        read_edges(path, confidence="A")


def test_read_beeline_csv_deduplicates_pairs(tmp_path):
    path = write_table(
        tmp_path / "net.csv.gz", ["Gene1", "Gene2"], [["A", "B"], ["A", "B"], ["B", "C"]], ","
    )
    edges = read_edges(path)
    assert edges.values.tolist() == [["A", "B", 1.0], ["B", "C", 1.0]]
    assert edges.attrs["perturbflow"]["format"] == "beeline"


def test_read_edges_unknown_columns_list_the_known_formats(tmp_path):
    path = write_table(tmp_path / "edges.tsv", ["from", "to"], [["A", "B"]])
    with pytest.raises(PriorFormatError, match=r"columns \['from', 'to'\] match no known format"):
        read_edges(path)
    with pytest.raises(PriorError, match="unknown edge_format 'sif'"):
        read_edges(path, edge_format="sif")
    with pytest.raises(PriorFormatError, match=r"missing column\(s\) \['Gene1', 'Gene2'\]"):
        read_edges(path, edge_format="beeline")


def test_read_edges_non_numeric_score_names_the_value_and_row(tmp_path):
    path = write_table(
        tmp_path / "string.tsv",
        ["gene1_symbol", "gene2_symbol", "combined_score"],
        [["A", "B", 900], ["B", "C", "high"]],
    )
    with pytest.raises(PriorFormatError, match=r"'combined_score' must be numeric.*'high'.*row 2"):
        read_edges(path)


def test_read_edges_missing_file(tmp_path):
    with pytest.raises(PriorFileNotFoundError, match=r"edge list file .*missing\.tsv"):
        read_edges(tmp_path / "missing.tsv")


def test_relation_edges_feed_adjacency_from_edges(tmp_path):
    path = write_table(
        tmp_path / "string.tsv",
        ["gene1_symbol", "gene2_symbol", "combined_score"],
        [["A", "B", 950], ["B", "C", 400]],
    )
    adjacency = adjacency_from_edges(as_relation_edges(read_edges(path)), ["A", "B", "C"], 0.7)
    assert adjacency.toarray().astype(int).tolist() == [[0, 1, 0], [1, 0, 0], [0, 0, 0]]


# --- gene sets and embedding tables ------------------------------------------------------------


def test_read_gene_sets_errors_are_prior_errors(tmp_path):
    with pytest.raises(PriorFileNotFoundError, match="does not exist"):
        read_gene_sets(tmp_path / "missing.gmt")
    bad = tmp_path / "bad.gmt"
    bad.write_text("only_a_name\n")
    with pytest.raises(PriorFormatError, match="line 1"):
        read_gene_sets(bad)
    good = tmp_path / "good.gmt"
    good.write_text("set\tdesc\tA\tB\n")
    assert read_gene_sets(good) == {"set": ["A", "B"]}


def test_read_embedding_table_errors_are_prior_errors(tmp_path):
    with pytest.raises(PriorFileNotFoundError, match="embedding table not found"):
        read_embedding_table(tmp_path / "missing.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("gene,d0,d1\nA,1.0,x\n")
    with pytest.raises(PriorFormatError, match="must be numeric"):
        read_embedding_table(bad)
    good = tmp_path / "good.tsv"
    good.write_text("gene\td0\nA\t1.5\n")
    assert read_embedding_table(good).loc["A", "d0"] == 1.5


# --- symbol harmonisation and coverage ---------------------------------------------------------

ALIAS_INFO = pd.DataFrame(
    {
        "gene_symbol": ["TP53", "MARCHF1", "GENEA", "GENEB", "SEPTIN7"],
        "full_name": ["", "", "", "", ""],
        "aliases": ["P53|TP53", "MARCH1|MARCHF1", "SHARED|GENEA", "SHARED|GENEB", "SEPT7"],
    }
)


def test_harmonise_symbols_exact_case_and_alias():
    mapping = harmonise_symbols(
        ["TP53", "mdm2", "P53X", "MARCHF1", "SEPT7"],
        ["TP53", "MDM2", "MARCH1", "SEPTIN7"],
        ALIAS_INFO,
    )
    assert mapping.mapping == {
        "TP53": "TP53",  # exact
        "mdm2": "MDM2",  # case
        "MARCHF1": "MARCH1",  # the dataset uses the previous symbol
        "SEPT7": "SEPTIN7",  # the source uses the previous symbol
    }
    assert (mapping.n_exact, mapping.n_case, mapping.n_alias) == (1, 1, 2)


def test_harmonise_symbols_ambiguous_alias_is_not_mapped():
    # "SHARED" is an alias of both GENEA and GENEB, which are both in the dataset.
    mapping = harmonise_symbols(["SHARED"], ["GENEA", "GENEB"], ALIAS_INFO)
    assert mapping.mapping == {}
    assert mapping.ambiguous == ("SHARED",)
    # Even with only one of them in the dataset, an alias of two genes is not guessed.
    assert harmonise_symbols(["SHARED"], ["GENEA"], ALIAS_INFO).mapping == {}


def test_harmonise_symbols_two_source_symbols_for_one_gene_are_ambiguous():
    mapping = harmonise_symbols(["Abc", "aBC"], ["ABC"])
    assert mapping.mapping == {}
    assert set(mapping.ambiguous) == {"Abc", "aBC"}


def test_harmonise_symbols_exact_match_wins_over_alias():
    mapping = harmonise_symbols(["P53", "TP53"], ["TP53"], ALIAS_INFO)
    assert mapping.mapping == {"TP53": "TP53"}


def test_harmonise_symbols_without_gene_info_skips_aliases():
    assert harmonise_symbols(["P53"], ["TP53"]).mapping == {}


def test_harmonise_table_edges_coverage_numbers(caplog):
    edges = pd.DataFrame(
        {
            "source": ["tp53", "P53", "X1", "MARCHF1"],
            "target": ["MDM2", "CDK1", "X2", "MDM2"],
            "weight": [1.0, 0.5, 0.2, 0.9],
        }
    )
    genes = ["TP53", "MDM2", "CDK1", "MARCH1", "GAPDH", "ACTB"]
    with caplog.at_level(logging.INFO, logger="perturbflow.programs.priors"):
        mapped, report = harmonise_table(
            edges,
            genes,
            columns=("source", "target"),
            gene_info=ALIAS_INFO,
            perturbed=["TP53", "GAPDH", "MARCH1"],
            source="toy PPI",
        )
    # "tp53" takes TP53 by case before "P53" could by alias: an earlier step wins.
    assert mapped[["source", "target"]].values.tolist() == [["TP53", "MDM2"], ["MARCH1", "MDM2"]]
    assert isinstance(report, Coverage)
    assert (report.n_genes, report.n_covered) == (6, 3)
    assert (report.n_perturbed, report.n_perturbed_covered) == (3, 2)
    assert report.missing_perturbed == ("GAPDH",)
    assert (report.n_exact, report.n_case, report.n_alias) == (2, 1, 1)
    assert report.fraction == pytest.approx(3 / 6)
    lines = [record.message for record in caplog.records if "prior coverage" in record.message]
    assert len(lines) == 1
    assert (
        "toy PPI: covers 3/6 genes (50.0%), 2/3 perturbed genes (66.7%) [missing: GAPDH]"
        in lines[0]
    )


def test_harmonise_table_index_follows_dataset_gene_order():
    table = pd.DataFrame({"d0": [1.0, 2.0, 3.0]}, index=["c", "A", "zz"])
    mapped, report = harmonise_table(table, ["A", "B", "C"])
    assert list(mapped.index) == ["A", "C"]
    assert mapped["d0"].tolist() == [2.0, 1.0]
    assert report.n_covered == 2


def test_harmonise_table_no_overlap_raises_with_examples():
    table = pd.DataFrame({"d0": [1.0]}, index=["TP53"])
    with pytest.raises(PriorCoverageError, match=r"none of its 1 gene symbols .*'TP53'"):
        harmonise_table(table, ["GAPDH"], source="toy")
    ensembl = [f"ENSG{i:011d}" for i in range(60)]
    with pytest.raises(PriorCoverageError, match="look like Ensembl IDs"):
        harmonise_table(table, ensembl, source="toy")


# --- the bundle -------------------------------------------------------------------------------


def test_discover_finds_the_priors_folder_of_a_data_dir(tmp_path):
    write_prior_folder(tmp_path / "priors")
    bundle = PriorBundle.discover(tmp_path)
    assert bundle.root == (tmp_path / "priors").resolve()
    assert bundle.go_annotations.name == "gene_go.tsv.gz"
    assert bundle.ppi.name == "string_ppi_700_ntm.tsv.gz"
    assert set(bundle.regulons) == {"collectri"}
    assert set(bundle.gene_sets) == {"reactome", "hallmark"}
    assert bundle.load_gene_sets() == {"p53 pathway": ["TP53", "MDM2"]}  # Reactome by default
    assert PriorBundle.discover(tmp_path / "priors").root == bundle.root


def test_discover_uses_the_data_dir_environment_variable(tmp_path, monkeypatch):
    write_prior_folder(tmp_path / "data" / "priors")
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "data"))
    assert PriorBundle.discover().root == (tmp_path / "data" / "priors").resolve()


def test_discover_without_priors_returns_an_empty_bundle_and_says_so(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="perturbflow.programs.priors"):
        bundle = PriorBundle.discover(tmp_path)
    assert bundle.is_empty
    assert bundle == PriorBundle()
    assert any("no prior-knowledge folder found" in record.message for record in caplog.records)
    with pytest.raises(PriorFileNotFoundError, match="does not exist"):
        PriorBundle.discover(tmp_path / "typo")


def test_empty_bundle_reports_what_is_missing_and_where():
    bundle = PriorBundle()
    assert bundle.gene_info_or_none() is None
    assert bundle.describe() == "no prior-knowledge files"
    with pytest.raises(
        MissingPriorError, match=r"no ppi .*needed for a test.*PERTURBFLOW_DATA_DIR"
    ):
        bundle.require("ppi", "a test")
    with pytest.raises(MissingPriorError, match=r"string_v12/string_ppi_700_ntm\.tsv\.gz"):
        bundle.load_ppi()
    with pytest.raises(MissingPriorError, match=r"regulon 'collectri'.*available: none"):
        bundle.load_regulons()
    with pytest.raises(MissingPriorError, match="no gene sets"):
        bundle.load_gene_sets()
    with pytest.raises(PriorError, match="unknown prior piece 'kegg'"):
        bundle.path("kegg")


def test_bundle_rejects_missing_explicit_files(tmp_path):
    with pytest.raises(PriorFileNotFoundError, match=r"ppi file .*absent\.tsv"):
        PriorBundle(ppi=tmp_path / "absent.tsv")


def test_bundle_caches_loaded_tables_in_memory(tmp_path):
    root = write_prior_folder(tmp_path / "priors")
    bundle = PriorBundle.discover(root)
    edges = bundle.load_ppi()
    (root / "string_v12/string_ppi_700_ntm.tsv.gz").unlink()  # a second read would now fail
    assert bundle.load_ppi() is edges
    assert bundle.load_regulons("collectri").values.tolist() == [["TP53", "MDM2", 1.0]]
    assert bundle.load_go_annotations(ontologies=["MF"])["go_id"].tolist() == ["GO:0003677"]
    assert bundle.load_go_terms().loc["GO:0005634", "name"] == "nucleus"
    assert bundle.gene_info_or_none()["gene_symbol"].tolist() == ["TP53", "MDM2"]


# --- the real tables (skipped without shared/data/priors) --------------------------------------

_REAL_DATA = data_dir()
_REAL_PRIORS = _REAL_DATA / "priors" if _REAL_DATA is not None else None


@pytest.mark.skipif(
    _REAL_PRIORS is None or not (_REAL_PRIORS / "string_v12").is_dir(),
    reason=f"no real priors folder (set {DATA_DIR_ENV} to the data folder holding priors/)",
)
def test_real_string_and_go_cover_well_known_genes():
    bundle = PriorBundle.discover(_REAL_PRIORS)
    ppi = bundle.load_ppi()
    assert len(ppi) > 100_000 and ppi["weight"].min() >= 0.7
    annotations = bundle.load_go_annotations(ontologies=["BP"])
    assert annotations["gene"].nunique() > 15_000
    gene_info = bundle.load_gene_info()
    # STRING against every GO-annotated gene: a gene counts when it has an edge within them.
    go_genes = sorted(annotations["gene"].unique())
    perturbed = ["TP53", "MYC", "KRAS", "CDK1"]
    _, string_coverage = harmonise_table(
        ppi, go_genes, columns=("source", "target"), gene_info=gene_info, perturbed=perturbed
    )
    assert 0.5 < string_coverage.fraction < 0.8
    assert string_coverage.n_perturbed_covered == len(perturbed)
    # GO for a small gene list written with an old symbol (SEPT7 → SEPTIN7) and in lower case.
    genes = ["TP53", "MDM2", "CDK1", "CCNB1", "MYC", "KRAS", "GAPDH", "ACTB", "SEPT7", "ctcf"]
    _, go_coverage = harmonise_table(annotations, genes, columns=("gene",), gene_info=gene_info)
    assert go_coverage.n_covered == len(genes)
    assert (go_coverage.n_alias, go_coverage.n_case) == (1, 1)
