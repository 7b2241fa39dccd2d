"""`perturbflow grn`: infer, score, complete and demo end to end on a small simulated screen."""

from __future__ import annotations

import networkx as nx
import pandas as pd
import pytest
from typer.testing import CliRunner

from perturbflow.cli import app

runner = CliRunner()
sergio = pytest.importorskip("sergio_rs", reason="the sim extra (sergio-rs) simulates the screen")


def _regulons(n_regulators: int, n_genes: int, each: int) -> pd.DataFrame:
    rows = [
        (f"R{r}", f"T{(3 * r + t) % (n_genes - n_regulators)}", 1 if (r + t) % 3 else -1)
        for r in range(n_regulators)
        for t in range(each)
    ]
    rows += [(f"R{r}", f"R{r + 1}", 1) for r in range(0, n_regulators - 1, 3)]
    return pd.DataFrame(rows, columns=["source", "target", "sign"])


@pytest.fixture(scope="module")
def screen(tmp_path_factory):
    from perturbflow.data.grnsim import GRNScreenConfig, simulate_grn_screen

    folder = tmp_path_factory.mktemp("grn")
    network = folder / "regulons.csv"
    _regulons(6, 30, 6).to_csv(network, index=False)
    config = GRNScreenConfig(
        network=str(network), n_genes=30, n_regulators=6, n_singles=6, n_doubles=4, n_cells=40,
        n_control_cells=60, scale_iter=5, safety_iter=50, regulator_pool_factor=1,
        min_targets=1, seed=1,
    )  # fmt: skip
    path = folder / "screen.h5ad"
    simulate_grn_screen(config).write_h5ad(path)
    return path


@pytest.mark.parametrize("method", ["screen", "regression", "correlation"])
def test_infer_then_score_against_the_screens_own_network(screen, tmp_path, method):
    edges = tmp_path / "edges.csv"
    inferred = runner.invoke(
        app, ["grn", "infer", str(screen), "--out", str(edges), "--method", method]
    )
    assert inferred.exit_code == 0, inferred.output
    table = pd.read_csv(edges)
    assert {"source", "target", "score"} <= set(table.columns)
    assert (table["source"] != table["target"]).all()
    metrics = tmp_path / "metrics.csv"
    scored = runner.invoke(
        app,
        [
            "grn",
            "score",
            str(screen),
            str(edges),
            "--truth",
            "data",
            "--out",
            str(metrics),
        ]
        + ["--permutations", "20"],
    )
    assert scored.exit_code == 0, scored.output
    overall = pd.read_csv(metrics).query("regulator == 'all'").set_index("metric")["value"]
    assert 0.0 <= overall["auprc"] <= 1.0 and overall["n_true"] > 0
    assert 0.0 < overall["epr_pvalue"] <= 1.0


def test_infer_writes_beeline_and_graphml(screen, tmp_path):
    beeline, graphml = tmp_path / "ranked.csv", tmp_path / "net.graphml"
    for path, fmt in ((beeline, "beeline"), (graphml, "graphml")):
        done = runner.invoke(
            app, ["grn", "infer", str(screen), "--out", str(path), "--format", fmt]
        )
        assert done.exit_code == 0, done.output
    ranked = pd.read_csv(beeline, sep="\t")
    assert list(ranked.columns) == ["Gene1", "Gene2", "EdgeWeight"]
    assert ranked["EdgeWeight"].is_monotonic_decreasing
    assert nx.read_graphml(graphml).number_of_edges() == len(ranked)
    again = runner.invoke(app, ["grn", "infer", str(screen), "--out", str(beeline)])
    assert again.exit_code == 1 and "--overwrite" in again.output


def test_infer_refuses_bad_options(screen, tmp_path):
    out = str(tmp_path / "e.csv")
    bad_method = runner.invoke(app, ["grn", "infer", str(screen), "--out", out, "--method", "x"])
    assert bad_method.exit_code == 1 and "--method must be one of" in bad_method.output
    no_checkpoint = runner.invoke(
        app, ["grn", "infer", str(screen), "--out", out, "--method", "model"]
    )
    assert no_checkpoint.exit_code == 1 and "--checkpoint" in no_checkpoint.output
    unknown = runner.invoke(
        app, ["grn", "infer", str(screen), "--out", out, "--regulators", "NOPE"]
    )
    assert unknown.exit_code == 1 and "NOPE" in unknown.output


def test_model_edges_from_a_checkpoint(screen, tmp_path):
    checkpoint = tmp_path / "additive.npz"
    fitted = runner.invoke(
        app,
        [
            "fit",
            str(screen),
            "--out",
            str(checkpoint),
            "--model",
            "additive",
            "--split-kind",
            "combo",
        ],
    )
    assert fitted.exit_code == 0, fitted.output
    edges = tmp_path / "edges.csv"
    done = runner.invoke(
        app,
        ["grn", "infer", str(screen), "--out", str(edges), "--method", "model"]
        + ["--checkpoint", str(checkpoint), "--regulators", "R0,R1"],
    )
    assert done.exit_code == 0, done.output
    assert set(pd.read_csv(edges)["source"]) == {"R0", "R1"}


def test_complete_holds_out_edges_and_scores_them(screen, tmp_path):
    out, scores = tmp_path / "completion.csv", tmp_path / "pairs.csv"
    done = runner.invoke(
        app,
        ["grn", "complete", str(screen), "--network", "data", "--features", "expression"]
        + ["--epochs", "20", "--out", str(out), "--scores-out", str(scores)],
    )
    assert done.exit_code == 0, done.output
    metrics = pd.read_csv(out).set_index("metric")["value"]
    assert 0.0 <= metrics["auroc"] <= 1.0
    pairs = pd.read_csv(scores)
    assert set(pairs["label"]) == {0, 1}


def test_demo_runs_on_a_given_network(tmp_path):
    network = tmp_path / "regulons.csv"
    _regulons(24, 80, 6).to_csv(network, index=False)
    done = runner.invoke(
        app,
        ["grn", "demo", "--out", str(tmp_path / "demo"), "--network", str(network)]
        + ["--genes", "40", "--singles", "8", "--cells", "30"],
    )
    assert done.exit_code == 0, done.output
    metrics = pd.read_csv(tmp_path / "demo" / "metrics.csv")
    assert set(metrics["method"]) == {"screen", "regression", "correlation"}
    assert (tmp_path / "demo" / "screen_edges.graphml").exists()
