"""Reading networks (named priors, files, simulated screens) and validating edge tables.

Every network here is a small hand-written table in ``tmp_path``; named priors are read from a
priors folder laid out like the shared data folder, built in ``tmp_path``.
"""

from __future__ import annotations

import gzip
import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from perturbflow.data import read
from perturbflow.grn.network import (
    EdgeTableError,
    EmptyNetworkError,
    GRNInputError,
    NetworkCoverageError,
    UnknownRegulatorError,
    read_network,
    require_genes,
    validate_edges,
)

GENES = ["TF1", "TF2", "G1", "G2", "G3"]


def write(path, text: str):
    path.write_text(text)
    return path


def test_csv_network_is_read_cleaned_and_sorted(tmp_path) -> None:
    path = write(tmp_path / "net.csv", "source,target,sign\nTF2,G1,-1\nTF1,G2,1\nTF1,G1,1\n")
    network = read_network(path)
    assert list(network.columns) == ["source", "target", "sign"]
    assert network.to_dict("records") == [
        {"source": "TF1", "target": "G1", "sign": 1},
        {"source": "TF1", "target": "G2", "sign": 1},
        {"source": "TF2", "target": "G1", "sign": -1},
    ]
    assert network["sign"].dtype == np.int8


def test_weight_gives_the_sign_and_a_missing_sign_is_unknown(tmp_path) -> None:
    tsv = write(tmp_path / "net.tsv", "tf\ttarget\tweight\nTF1\tG1\t-0.3\nTF1\tG2\t2.5\n")
    assert read_network(tsv)["sign"].tolist() == [-1, 1]
    unsigned = write(tmp_path / "unsigned.csv", "Gene1,Gene2\nTF1,G1\n")
    assert read_network(unsigned)["sign"].tolist() == [0]


def test_restriction_to_genes_drops_and_counts_unmeasured_regulators(tmp_path, caplog) -> None:
    path = write(
        tmp_path / "net.csv",
        "source,target,sign\nTF1,G1,1\nTF1,OTHER,1\nABSENT,G1,1\nABSENT,G2,-1\ntf2,g3,-1\n",
    )
    with caplog.at_level(logging.INFO, logger="perturbflow.grn.network"):
        network = read_network(path, genes=GENES)
    # Case-insensitive symbols map onto the dataset's spelling; both ends must be measured.
    assert network[["source", "target"]].values.tolist() == [["TF1", "G1"], ["TF2", "G3"]]
    dropped = network.attrs["perturbflow"]["dropped"]
    assert dropped["regulator not measured"] == 2 and dropped["target not measured"] == 1
    assert network.attrs["perturbflow"]["absent_regulators"] == ["ABSENT"]
    assert "dropped 2 whose regulator is not measured (1 regulators, e.g. ABSENT)" in caplog.text


def test_a_network_sharing_no_gene_with_the_data_names_both_sides(tmp_path) -> None:
    path = write(tmp_path / "mouse.csv", "source,target\nSox2,Nanog\nPou5f1,Klf4\n")
    with pytest.raises(NetworkCoverageError) as error:
        read_network(path, genes=["ENSG01", "ENSG02"])
    message = str(error.value)
    assert str(path) in message and "Sox2" in message and "ENSG01" in message


def test_measured_genes_without_a_measured_edge_is_a_clear_error(tmp_path) -> None:
    path = write(tmp_path / "net.csv", "source,target\nTF1,OTHER\nABSENT,G1\n")
    with pytest.raises(NetworkCoverageError, match="no edge has both its regulator"):
        read_network(path, genes=GENES)


def test_empty_networks_are_rejected(tmp_path) -> None:
    with pytest.raises(EmptyNetworkError, match="no edges"):
        read_network(write(tmp_path / "header.csv", "source,target,sign\n"))
    with pytest.raises(EmptyNetworkError, match="empty"):
        read_network(write(tmp_path / "blank.csv", ""))
    with pytest.raises(EmptyNetworkError, match="1 self-loops"):
        read_network(pd.DataFrame({"source": ["A"], "target": ["A"]}))


def test_repeated_pairs_are_merged_and_conflicting_signs_become_unknown(caplog) -> None:
    table = pd.DataFrame(
        {
            "source": ["A", "A", "A", "A", "A", "B", "B"],
            "target": ["X", "X", "Y", "Y", "Z", "X", "X"],
            "sign": [1, -1, 1, 1, 0, 0, -1],
        }
    )
    with caplog.at_level(logging.WARNING, logger="perturbflow.grn.network"):
        network = read_network(table)
    signs = {(s, t): sign for s, t, sign in network.itertuples(index=False)}
    # Opposite signs conflict; a 0 (unknown) agrees with any sign; equal signs merge.
    assert signs == {("A", "X"): 0, ("A", "Y"): 1, ("A", "Z"): 0, ("B", "X"): -1}
    info = network.attrs["perturbflow"]
    assert info["conflicting_signs"] == 1 and info["dropped"]["repeated pair"] == 3
    assert "1 pair(s) listed with both signs got sign 0" in caplog.text and "A→X" in caplog.text


def test_missing_columns_and_non_numeric_signs_are_named(tmp_path) -> None:
    with pytest.raises(EdgeTableError, match=r"missing a target column.*found columns"):
        read_network(write(tmp_path / "a.csv", "source,to\nA,B\n"))
    with pytest.raises(EdgeTableError, match=r"column 'sign'.*'up' on row 1"):
        read_network(write(tmp_path / "b.csv", "source,target,sign\nA,B,1\nA,C,up\n"))


def test_unknown_name_or_missing_file_lists_the_named_networks(tmp_path) -> None:
    with pytest.raises(GRNInputError, match="collectri, dorothea"):
        read_network(str(tmp_path / "nope.csv"))


def test_named_priors_come_from_the_priors_folder(tmp_path) -> None:
    dorothea = tmp_path / "priors" / "dorothea"
    beeline = tmp_path / "priors" / "beeline"
    dorothea.mkdir(parents=True)
    beeline.mkdir(parents=True)
    with gzip.open(dorothea / "dorothea_hs.tsv.gz", "wt") as stream:
        stream.write("tf\tconfidence\ttarget\tmor\nTF1\tA\tG1\t1\nTF1\tD\tG2\t1\nTF2\tB\tG3\t-1\n")
    with gzip.open(beeline / "human_STRING-network.csv.gz", "wt") as stream:
        stream.write("Gene1,Gene2\nTF1,G1\nTF2,G2\n")
    strict = read_network("dorothea", data_dir=tmp_path, confidence="A")
    assert strict[["source", "target", "sign"]].values.tolist() == [["TF1", "G1", 1]]
    default = read_network("dorothea", data_dir=tmp_path, genes=GENES)
    assert default["sign"].tolist() == [1, -1]  # levels A–C: the D edge is left out
    assert read_network("beeline_string", data_dir=tmp_path)["sign"].tolist() == [0, 0]


def test_a_simulated_screen_holds_its_true_network() -> None:
    rng = np.random.default_rng(0)
    adata = ad.AnnData(
        X=rng.poisson(5.0, (20, 3)).astype(np.float32),
        obs=pd.DataFrame(
            {"condition": ["ctrl"] * 10 + ["A"] * 10}, index=[f"c{i}" for i in range(20)]
        ),
        var=pd.DataFrame(index=["A", "B", "C"]),
    )
    adata.uns["grn_edges"] = pd.DataFrame(
        {"source": ["A", "A"], "target": ["B", "C"], "sign": [1, -1], "k": [2.0, -3.0]}
    )
    dataset = read(adata)
    network = read_network(dataset, genes=dataset.genes)
    assert network.values.tolist() == [["A", "B", 1], ["A", "C", -1]]
    pd.testing.assert_frame_equal(read_network(adata), network)
    del adata.uns["grn_edges"]
    with pytest.raises(GRNInputError, match="no 'grn_edges'"):
        read_network(adata)


def test_validate_edges_orders_columns_and_checks_values() -> None:
    table = pd.DataFrame(
        {"extra": [1, 2], "fdr": [0.1, 0.2], "score": [3, 1], "target": ["B", "C"], "source": "A"}
    )
    edges = validate_edges(table)
    assert list(edges.columns) == ["source", "target", "score", "fdr", "extra"]
    assert edges["score"].dtype == np.float64
    with pytest.raises(EdgeTableError, match=r"missing column\(s\) \['score'\]"):
        validate_edges(table.drop(columns="score"), what="my edges")
    with pytest.raises(EdgeTableError, match=r"column 'score'.*'high'"):
        validate_edges(table.assign(score=["high", 1]))
    with pytest.raises(EdgeTableError, match="≥ 0"):
        validate_edges(table.assign(score=[-1.0, 1.0]))
    with pytest.raises(EdgeTableError, match="'sign' must be -1, 0 or \\+1"):
        validate_edges(table.assign(sign=[2, 1]))
    with pytest.raises(EdgeTableError, match="'fdr' must lie in"):
        validate_edges(table.assign(fdr=[1.5, 0.0]))
    with pytest.raises(EdgeTableError, match="A→B"):
        validate_edges(table.assign(target=["B", "B"]))


def test_a_regulator_asked_for_by_name_must_exist() -> None:
    assert require_genes("TF1", GENES, what="regulator", where="genes") == ["TF1"]
    with pytest.raises(UnknownRegulatorError, match=r"1 regulator\(s\) not in genes: NOPE"):
        require_genes(["TF1", "NOPE"], GENES, what="regulator", where="genes")
