"""Writing edges tables for other tools: BEELINE ranked edges, GraphML and plain CSV.

Every writer validates the table (:func:`~perturbflow.grn.network.validate_edges`), writes
atomically (a temporary file renamed into place, so a crash never leaves half a file) and
refuses to replace an existing file unless ``overwrite=True``
(:class:`~perturbflow.data.outputs.OutputExistsError`).
"""

from __future__ import annotations

from pathlib import Path

import networkx as nx
import numpy as np
import pandas as pd

from perturbflow.data.outputs import write_atomic, write_csv
from perturbflow.grn.network import OPTIONAL_EDGE_COLUMNS, validate_edges

__all__ = ["BEELINE_COLUMNS", "read_edges_csv", "write_beeline", "write_edges_csv", "write_graphml"]

BEELINE_COLUMNS = ("Gene1", "Gene2", "EdgeWeight")


def write_beeline(edges: pd.DataFrame, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write BEELINE's ranked-edges file (``rankedEdges.csv``): columns ``Gene1, Gene2,
    EdgeWeight`` (= ``score``), sorted by score (descending), then source and target.

    Tab-separated despite the ``.csv`` name, because BEELINE's evaluation (BLEval) reads
    ``rankedEdges.csv`` with ``sep="\\t"``.
    """
    edges = validate_edges(edges, what=f"edges for {path}")
    ranked = edges.sort_values(
        ["score", "source", "target"], ascending=[False, True, True], ignore_index=True
    )
    frame = pd.DataFrame(
        {"Gene1": ranked["source"], "Gene2": ranked["target"], "EdgeWeight": ranked["score"]}
    )
    return write_atomic(path, overwrite, lambda tmp: frame.to_csv(tmp, sep="\t", index=False))


def write_graphml(edges: pd.DataFrame, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write the edges as a directed GraphML graph (e.g. for Cytoscape or networkx).

    Every edge carries ``score`` (float) and ``sign`` (int; 0 when the table has no sign), plus
    ``effect``, ``statistic``, ``pvalue`` and ``fdr`` (float) when the table has them.
    """
    edges = validate_edges(edges, what=f"edges for {path}")
    graph = nx.DiGraph()
    graph.add_nodes_from(pd.unique(np.concatenate([edges["source"], edges["target"]])))
    floats = [column for column in OPTIONAL_EDGE_COLUMNS if column in edges and column != "sign"]
    signs = edges["sign"].to_numpy() if "sign" in edges else np.zeros(len(edges), dtype=int)
    values = edges[["score", *floats]].to_numpy(dtype=np.float64)  # (E, 1 + F)
    names = ["score", *floats]
    for source, target, sign, row in zip(
        edges["source"], edges["target"], signs, values, strict=True
    ):
        graph.add_edge(
            source, target, sign=int(sign), **dict(zip(names, map(float, row), strict=True))
        )
    return write_atomic(path, overwrite, lambda tmp: nx.write_graphml(graph, tmp))


def write_edges_csv(edges: pd.DataFrame, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write an edges table as CSV (all its columns, no index); read it back with
    :func:`read_edges_csv`."""
    edges = validate_edges(edges, what=f"edges for {path}")
    return write_csv(edges, path, overwrite=overwrite)


def read_edges_csv(path: str | Path) -> pd.DataFrame:
    """Read an edges CSV (as :func:`write_edges_csv` writes) into a validated edges table."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: edges file not found; check the path")
    # Symbols such as "NA" stay text; only empty fields are missing.
    table = pd.read_csv(
        path, dtype={"source": str, "target": str}, keep_default_na=False, na_values=[""]
    )
    return validate_edges(table, what=str(path))
