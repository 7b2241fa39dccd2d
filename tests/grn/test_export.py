"""Edges written as CSV (round trip), BEELINE ranked edges and GraphML, never clobbering files."""

from __future__ import annotations

import math

import networkx as nx
import numpy as np
import pandas as pd
import pytest

from perturbflow.data.outputs import OutputExistsError
from perturbflow.grn.export import read_edges_csv, write_beeline, write_edges_csv, write_graphml
from perturbflow.grn.network import EdgeTableError


@pytest.fixture
def edges() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "source": ["A", "NA", "A", "B"],
            "target": ["B", "C", "C", "C"],
            "score": [0.5, 3.0, 2.0, 2.0],
            "sign": np.array([1, -1, 0, 1], dtype=np.int8),
            "pvalue": [0.2, 1e-6, np.nan, 0.01],
        }
    )


def test_csv_round_trip_keeps_columns_types_and_odd_symbols(edges, tmp_path) -> None:
    path = write_edges_csv(edges, tmp_path / "edges.csv")
    back = read_edges_csv(path)
    pd.testing.assert_frame_equal(back, edges)  # "NA" stays a gene symbol, NaN stays NaN
    assert sorted(p.name for p in tmp_path.iterdir()) == ["edges.csv"]  # no temporary left


def test_writers_refuse_to_overwrite_without_permission(edges, tmp_path) -> None:
    for write, name in ((write_edges_csv, "e.csv"), (write_beeline, "r.csv"), (write_graphml, "g.graphml")):  # fmt: skip
        path = write(edges, tmp_path / name)
        with pytest.raises(OutputExistsError, match="overwrite=True"):
            write(edges.head(1), path)
        write(edges.head(1), path, overwrite=True)
    assert len(read_edges_csv(tmp_path / "e.csv")) == 1


def test_beeline_file_has_its_header_and_ranks_by_score(edges, tmp_path) -> None:
    path = write_beeline(edges, tmp_path / "rankedEdges.csv")
    lines = path.read_text().splitlines()
    assert lines[0] == "Gene1\tGene2\tEdgeWeight"
    # Score descending; the tie at 2.0 in source order (A before B).
    assert [line.split("\t")[:2] for line in lines[1:]] == [
        ["NA", "C"], ["A", "C"], ["B", "C"], ["A", "B"],
    ]  # fmt: skip
    table = pd.read_csv(path, sep="\t", keep_default_na=False)  # as BEELINE's BLEval reads it
    assert table["EdgeWeight"].tolist() == [3.0, 2.0, 2.0, 0.5]


def test_graphml_is_readable_by_networkx_with_edge_attributes(edges, tmp_path) -> None:
    graph = nx.read_graphml(write_graphml(edges, tmp_path / "grn.graphml"))
    assert graph.is_directed() and set(graph.nodes) == {"A", "B", "C", "NA"}
    attributes = graph.edges["NA", "C"]
    assert attributes["score"] == 3.0 and attributes["sign"] == -1
    assert isinstance(attributes["sign"], int) and isinstance(attributes["score"], float)
    assert math.isnan(graph.edges["A", "C"]["pvalue"])
    unsigned = nx.read_graphml(write_graphml(edges.drop(columns="sign"), tmp_path / "u.graphml"))
    assert {data["sign"] for _, _, data in unsigned.edges(data=True)} == {0}


def test_invalid_edges_are_never_written(edges, tmp_path) -> None:
    with pytest.raises(EdgeTableError, match="'score'"):
        write_beeline(edges.assign(score=-edges["score"]), tmp_path / "bad.csv")
    assert not (tmp_path / "bad.csv").exists()
