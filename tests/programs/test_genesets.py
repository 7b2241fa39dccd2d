"""Gene-set files: GMT parsing, its error messages, and the gene × set membership table."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perturbflow.programs.genesets import (
    GeneSetFileNotFoundError,
    GeneSetFormatError,
    gene_sets_to_membership,
    read_gmt,
)


def _write(tmp_path, text, name="sets.gmt"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_read_gmt_keeps_file_order_and_skips_blank_lines(tmp_path):
    path = _write(
        tmp_path,
        "PATH_A\thttp://a\tG1\tG2\tG3\n\nPATH_B\tdescription\tG3\tG4\t\t\n",
    )
    assert read_gmt(path) == {"PATH_A": ["G1", "G2", "G3"], "PATH_B": ["G3", "G4"]}


def test_read_gmt_drops_duplicate_genes_within_a_set(tmp_path):
    path = _write(tmp_path, "S\t-\tG1\tG2\tG1\n")
    assert read_gmt(path) == {"S": ["G1", "G2"]}


def test_read_gmt_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "nowhere.gmt"
    with pytest.raises(GeneSetFileNotFoundError, match="nowhere.gmt"):
        read_gmt(missing)
    with pytest.raises(FileNotFoundError):
        read_gmt(missing)


@pytest.mark.parametrize("bad_line", ["ONLY_NAME", "NAME\tdescription", "\tdesc\tG1"])
def test_read_gmt_malformed_line_names_the_line_number(tmp_path, bad_line):
    path = _write(tmp_path, f"GOOD\t-\tG1\tG2\n\n{bad_line}\n")
    with pytest.raises(GeneSetFormatError, match="line 3"):
        read_gmt(path)


def test_read_gmt_duplicate_set_name_points_at_both_lines(tmp_path):
    path = _write(tmp_path, "S\t-\tG1\nT\t-\tG2\nS\t-\tG3\n")
    with pytest.raises(GeneSetFormatError, match=r"line 3.*line 1"):
        read_gmt(path)


def test_read_gmt_empty_file_is_an_error(tmp_path):
    with pytest.raises(GeneSetFormatError, match="no gene sets"):
        read_gmt(_write(tmp_path, "\n\n"))


_symbol = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.", min_size=1, max_size=8)


@settings(max_examples=50, deadline=None)
@given(
    st.dictionaries(
        _symbol, st.lists(_symbol, min_size=1, max_size=6, unique=True), min_size=1, max_size=5
    )
)
def test_read_gmt_round_trips_what_a_writer_produces(gene_sets):
    import tempfile
    from pathlib import Path

    text = "".join(f"{name}\tdesc\t" + "\t".join(genes) + "\n" for name, genes in gene_sets.items())
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "sets.gmt"
        path.write_text(text, encoding="utf-8")
        assert read_gmt(path) == gene_sets


def test_membership_counts_only_measured_genes_and_applies_min_size():
    gene_sets = {"big": ["A", "B", "C", "X"], "small": ["A", "Y", "Z"], "other": ["C", "D"]}
    membership = gene_sets_to_membership(gene_sets, ["A", "B", "C", "D"], min_size=2)
    assert list(membership.columns) == ["big", "other"]  # "small" has one measured gene
    assert list(membership.index) == ["A", "B", "C", "D"]
    assert membership.dtypes.eq(bool).all()
    assert membership["big"].tolist() == [True, True, True, False]
    assert membership["other"].tolist() == [False, False, True, True]


def test_membership_max_size_drops_huge_sets():
    gene_sets = {"all": list("ABCDE"), "pair": ["A", "B"]}
    membership = gene_sets_to_membership(gene_sets, list("ABCDE"), min_size=2, max_size=3)
    assert list(membership.columns) == ["pair"]


def test_membership_without_overlap_says_to_check_symbols():
    with pytest.raises(GeneSetFormatError, match="same gene symbols"):
        gene_sets_to_membership({"s": ["x", "y"]}, ["A", "B"], min_size=1)


def test_membership_rejects_duplicate_genes():
    with pytest.raises(ValueError, match="duplicate"):
        gene_sets_to_membership({"s": ["A"]}, ["A", "A"], min_size=1)
