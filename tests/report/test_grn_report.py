"""The report's regulatory-network section on a hand-made screen whose network is known."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from perturbflow.data import read
from perturbflow.report.benchmark_report import grn_section
from perturbflow.report.html import render_report

GENES = ["A", "B", "C", "D", "E", "F"]
EDGES = [("A", "B", 1), ("B", "C", 1), ("D", "E", -1)]
EFFECTS = {  # each knock-out's change of log expression
    "A": {"A": -2.0, "B": -1.0, "C": -0.8},
    "B": {"B": -2.0, "C": -1.6},
    "D": {"D": -2.0, "E": 0.9},
    "A+D": {"A": -2.0, "B": -1.0, "C": -0.8, "D": -2.0, "E": 0.9},
}


def _screen(with_truth: bool) -> ad.AnnData:
    rng = np.random.default_rng(0)
    blocks, labels = [rng.normal(3.0, 0.2, (100, len(GENES)))], ["ctrl"] * 100
    for condition, change in EFFECTS.items():
        shift = np.array([change.get(g, 0.0) for g in GENES])
        blocks.append(3.0 + shift + rng.normal(0.0, 0.2, (50, len(GENES))))
        labels += [condition] * 50
    obs = pd.DataFrame({"condition": labels}, index=[f"c{i}" for i in range(len(labels))])
    adata = ad.AnnData(
        X=np.vstack(blocks).astype(np.float32), obs=obs, var=pd.DataFrame(index=GENES)
    )
    if with_truth:
        adata.uns["grn_edges"] = pd.DataFrame(EDGES, columns=["source", "target", "sign"])
    return adata


def test_a_screen_with_its_network_gets_curves_a_graph_and_a_table():
    figures, tables, notes = grn_section(read(_screen(True), min_cells=5))
    assert len(figures) == 2 and all(isinstance(f, Figure) for f in figures.values())
    ((name, table),) = tables.items()
    assert "true network" in name
    assert list(table["method"]) == ["screen", "regression", "correlation"]
    assert (table["n_true"] == 3).all()  # A→B, B→C, D→E among the 3 perturbed regulators
    regression = table.set_index("method").loc["regression"]
    assert regression["auroc"] > 0.9  # direct effects rank the three true edges first
    assert "3 perturbed regulator(s)" in notes[0]
    html = render_report(
        title="t", summary=pd.DataFrame(), figures=figures, command="c", versions={},
        data_checksums={}, tables=tables,
    )  # fmt: skip
    assert "Regulatory edges against the screen" in html and "regression" in html


def test_without_a_reference_the_edges_are_drawn_but_not_scored(tmp_path):
    figures, tables, notes = grn_section(read(_screen(False), min_cells=5), data_dir=tmp_path)
    assert len(figures) == 1 and tables == {}
    assert "not scored" in notes[0]


def test_a_screen_without_singles_has_no_section():
    adata = _screen(True)
    adata = adata[adata.obs["condition"].isin(["ctrl", "A+D"])].copy()
    assert grn_section(read(adata, min_cells=5)) == ({}, {}, [])


def test_a_screen_too_small_for_edges_still_gets_its_report(tmp_path):
    from perturbflow.eval.loop import model_runs, run
    from perturbflow.report.benchmark_report import build_report

    adata = _screen(True)
    adata = adata[adata.obs["condition"].isin(["ctrl", "A", "B"])].copy()  # 2 conditions only
    dataset = read(adata, min_cells=5)
    result = run(dataset, "random", model_runs("additive"), [1], out=tmp_path)
    html = build_report(tmp_path, dataset, result, title="t", command="c").read_text()
    assert "Regulatory edges not computed" in html
