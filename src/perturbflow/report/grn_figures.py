"""Figures of inferred gene regulatory networks: precision-recall curves and the top edges.

Built on :class:`matplotlib.figure.Figure`, not pyplot, like every report figure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import networkx as nx
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_curve


def pr_curves(
    edges: Mapping[str, pd.DataFrame],
    truth: pd.DataFrame,
    *,
    genes: Sequence[str],
    regulators: Sequence[str],
) -> Figure:
    """Precision-recall curve of each method's edges over the same candidates (every regulator ×
    measured gene but itself; a candidate without an edge scores 0); the dashed line is chance."""
    genes = list(genes)
    candidates = pd.MultiIndex.from_tuples(
        [(r, g) for r in regulators for g in genes if g != r], names=["source", "target"]
    )
    known = pd.MultiIndex.from_frame(truth[["source", "target"]])
    labels = candidates.isin(known).astype(int)  # (n,)
    figure = Figure(figsize=(5.0, 4.0))
    axis = figure.subplots()
    for method, table in edges.items():
        scores = table.set_index(["source", "target"])["score"]
        scores = scores[~scores.index.duplicated()].reindex(candidates).fillna(0.0).to_numpy()
        precision, recall, _ = precision_recall_curve(labels, scores)
        axis.plot(recall, precision, label=method)
    axis.axhline(
        labels.mean() if len(labels) else 0.0, color="grey", linestyle="--", label="chance"
    )
    axis.set_xlabel("recall")
    axis.set_ylabel("precision")
    axis.set_ylim(0.0, 1.02)
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure


def top_edges_figure(edges: pd.DataFrame, *, top: int = 30, seed: int = 0) -> Figure:
    """The ``top`` highest-scoring edges as a directed graph: regulators dark, targets light;
    activation (sign +1) red, repression (-1) blue, unknown grey; width by score."""
    chosen = edges.nlargest(top, "score")
    graph = nx.DiGraph()
    for row in chosen.itertuples(index=False):
        graph.add_edge(row.source, row.target, score=row.score, sign=getattr(row, "sign", 0))
    figure = Figure(figsize=(6.0, 5.0))
    axis = figure.subplots()
    if graph.number_of_edges():
        layout = nx.spring_layout(graph, seed=seed)
        sources = set(chosen["source"])
        colours = ["#34495e" if node in sources else "#aed6f1" for node in graph.nodes]
        scores = np.array([graph.edges[e]["score"] for e in graph.edges])
        widths = 0.5 + 2.5 * scores / scores.max()
        palette = {1: "#c0392b", -1: "#2471a3"}
        edge_colours = [palette.get(int(graph.edges[e]["sign"]), "#7f8c8d") for e in graph.edges]
        nx.draw_networkx(
            graph,
            layout,
            ax=axis,
            node_color=colours,
            edge_color=edge_colours,
            width=widths,
            font_size=7,
            node_size=300,
            arrowsize=8,
        )
    axis.set_axis_off()
    figure.tight_layout()
    return figure
