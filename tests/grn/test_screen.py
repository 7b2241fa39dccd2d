"""Edges from knock-outs, from a model's in-silico perturbations, and transitive reduction.

The planted screen is built by hand: control cells around a fixed profile, and knock-outs of
R1 and R2 that move known targets by known amounts, so every edge and sign is known.
"""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.stats

from perturbflow.data import read
from perturbflow.data.splits import Split
from perturbflow.grn.network import EdgeTableError, GRNInputError, UnknownRegulatorError
from perturbflow.grn.screen import (
    benjamini_hochberg,
    model_edges,
    regression_edges,
    screen_edges,
    transitive_reduction,
)

GENES = ["R1", "R2", "T1", "T2", "T3", "T4", "T5", "N1", "N2", "N3", "N4", "N5"]
# Knock-out effects on log expression: a target that drops was activated (sign +1).
PLANTED = {
    "R1": {"R1": -2.0, "T1": -1.0, "T2": 0.8, "T3": -0.6},
    "R2": {"R2": -2.0, "T4": -1.0, "T5": 1.0},
}
TRUE_SIGNS = {("R1", "T1"): 1, ("R1", "T2"): -1, ("R1", "T3"): 1, ("R2", "T4"): 1, ("R2", "T5"): -1}


def planted_screen(seed: int = 0, n_cells: int = 60, small: int = 60) -> ad.AnnData:
    """Control (150 cells), R1 and R2 knock-outs, a double, a single of an unmeasured gene X9
    and a small single of N5 (``small`` cells)."""
    rng = np.random.default_rng(seed)
    base = np.full(len(GENES), 2.5)
    blocks, labels = [], []
    design = [("ctrl", 150), ("R1", n_cells), ("R2", n_cells), ("R1+R2", n_cells)]
    design += [("X9", n_cells), ("N5", small)]
    for condition, count in design:
        shift = np.zeros(len(GENES))
        for gene in condition.split("+"):
            for target, effect in PLANTED.get(gene, {}).items():
                shift[GENES.index(target)] += effect
        blocks.append(base + shift + rng.normal(0.0, 0.3, (count, len(GENES))))
        labels += [condition] * count
    obs = pd.DataFrame({"condition": labels}, index=[f"c{i}" for i in range(len(labels))])
    X = np.clip(np.vstack(blocks), 0.0, None).astype(np.float32)
    return ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=GENES))


@pytest.fixture(scope="module")
def dataset():
    return read(planted_screen(), min_cells=5)


@pytest.fixture(scope="module")
def edges(dataset) -> pd.DataFrame:
    return screen_edges(dataset)


def test_planted_edges_are_recovered_with_their_signs(edges) -> None:
    assert set(edges["source"]) == {"R1", "R2", "N5"}  # measured singles; X9 is not measured
    for (source, target), sign in TRUE_SIGNS.items():
        row = edges[(edges["source"] == source) & (edges["target"] == target)].iloc[0]
        assert row["sign"] == sign and row["fdr"] < 1e-6
    top = edges[edges["fdr"] < 0.01]
    assert set(zip(top["source"], top["target"], strict=True)) == set(TRUE_SIGNS)
    for regulator in ("R1", "R2"):
        strongest = edges[edges["source"] == regulator].head(len(PLANTED[regulator]) - 1)
        assert set(strongest["target"]) == set(PLANTED[regulator]) - {regulator}


def test_a_regulator_is_never_its_own_target_and_columns_follow_the_format(edges) -> None:
    assert not (edges["source"] == edges["target"]).any()
    assert list(edges.columns)[:8] == [
        "source", "target", "score", "sign", "effect", "statistic", "pvalue", "fdr",
    ]  # fmt: skip
    assert edges["score"].is_monotonic_decreasing
    np.testing.assert_allclose(edges["score"], edges["statistic"].abs())
    assert len(edges) == 3 * (len(GENES) - 1)  # R1, R2, N5 × every other gene


def test_effect_and_statistic_are_welch_t_tests(dataset, edges) -> None:
    row = edges[(edges["source"] == "R1") & (edges["target"] == "T2")].iloc[0]
    column = GENES.index("T2")
    perturbed = dataset.expression("R1")[:, column].astype(np.float64)
    control = dataset.control_expression()[:, column].astype(np.float64)
    expected = scipy.stats.ttest_ind(perturbed, control, equal_var=False)
    assert row["effect"] == pytest.approx(perturbed.mean() - control.mean())
    assert row["statistic"] == pytest.approx(expected.statistic)
    assert row["pvalue"] == pytest.approx(expected.pvalue, rel=1e-6)


def test_fdr_is_monotone_in_the_p_value_and_matches_scipy(edges) -> None:
    ordered = edges.sort_values("pvalue", kind="stable")
    assert ordered["fdr"].is_monotonic_increasing
    assert (edges["fdr"] >= edges["pvalue"]).all() and (edges["fdr"] <= 1).all()
    pvalues = np.random.default_rng(1).uniform(size=200) ** 3
    np.testing.assert_allclose(
        benjamini_hochberg(pvalues), scipy.stats.false_discovery_control(pvalues)
    )
    with_nan = benjamini_hochberg(np.array([0.01, np.nan, 0.04]))
    assert np.isnan(with_nan[1]) and with_nan[[0, 2]].tolist() == [0.02, 0.04]


def test_gain_of_function_flips_every_sign(dataset, edges) -> None:
    gain = screen_edges(dataset, perturbation="gain")
    merged = edges.merge(gain, on=["source", "target"], suffixes=("_loss", "_gain"))
    assert (merged["sign_loss"] == -merged["sign_gain"]).all()
    with pytest.raises(GRNInputError, match="'loss': knock-out"):
        screen_edges(dataset, perturbation="knockout")


def test_named_regulators_may_be_unmeasured_but_must_exist(dataset) -> None:
    named = screen_edges(dataset, regulators=["X9"])
    assert set(named["source"]) == {"X9"} and len(named) == len(GENES)
    with pytest.raises(UnknownRegulatorError, match=r"NOPE.*available: N5, R1, R2, X9"):
        screen_edges(dataset, regulators=["R1", "NOPE"])


def test_small_conditions_are_skipped_by_default_and_refused_by_name(caplog) -> None:
    dataset = read(planted_screen(small=4), min_cells=2)
    with caplog.at_level(logging.WARNING, logger="perturbflow.grn.screen"):
        edges = screen_edges(dataset, min_cells=10)
    assert "N5" not in set(edges["source"]) and "N5 (4)" in caplog.text
    with pytest.raises(GRNInputError, match=r"N5 \(4\)"):
        screen_edges(dataset, regulators=["N5"], min_cells=10)


def test_model_edges_equal_the_additive_models_predicted_deltas(dataset) -> None:
    from perturbflow.models import get_model

    split = Split(kind="custom", seed=0, train=("ctrl", "R1", "R2"), val=(), test=())
    model = get_model("additive").fit(dataset, split)
    edges = model_edges(model, ["R1", "R2"])
    deltas = model.predict_delta(["R1", "R2"])
    assert not (edges["source"] == edges["target"]).any()
    for source, target, effect, score, sign in edges[
        ["source", "target", "effect", "score", "sign"]
    ].itertuples(index=False):
        assert effect == deltas.loc[source, target]
        assert score == abs(effect) and sign == -np.sign(effect)
    assert len(edges) == 2 * (len(GENES) - 1)
    with pytest.raises(GRNInputError, match="not a single gene"):
        model_edges(model, ["R1+R2"])
    # Against a background, the effect is the change beyond the background's mean change.
    specific = model_edges(model, ["R1"], background=["R1", "R2"])
    shared = deltas.mean(axis=0)
    for target, effect in specific[["target", "effect"]].itertuples(index=False):
        assert effect == pytest.approx(deltas.loc["R1", target] - shared[target], abs=1e-9)
    assert "background" in specific.attrs["perturbflow"]["score"]


def test_a_chain_is_reduced_to_its_links() -> None:
    edges = pd.DataFrame(
        {
            "source": ["A", "B", "A", "A", "D", "D", "E"],
            "target": ["B", "C", "C", "E", "B", "C", "C"],
            "score": [10.0, 8.0, 5.0, 9.0, 4.0, 9.0, 1.0],
            "fdr": [0.001, 0.001, 0.01, 0.001, 0.001, 0.001, 0.5],
        }
    )
    reduced = transitive_reduction(edges)
    marked = dict(
        zip(zip(reduced["source"], reduced["target"], strict=True), reduced["via"], strict=True)
    )
    # A→C (5) is explained by A→B→C (weaker link 8 ≥ 5); A→E→C does not count (E→C not
    # significant); D→C (9) is stronger than D→B→C's weaker link (4), so it stays.
    assert marked == {
        ("A", "B"): "", ("B", "C"): "", ("A", "C"): "B", ("A", "E"): "",
        ("D", "B"): "", ("D", "C"): "", ("E", "C"): "",
    }  # fmt: skip
    assert reduced["indirect"].tolist() == [False, False, True, False, False, False, False]
    assert list(reduced["source"]) == list(edges["source"])  # input order kept
    strict = transitive_reduction(edges, fdr=0.005)  # A→C's path is still significant
    assert strict["indirect"].sum() == 1
    with pytest.raises(EdgeTableError, match="no column 'fdr'"):
        transitive_reduction(edges.drop(columns="fdr"))


def test_screen_of_a_simulated_grn_finds_its_network(tmp_path) -> None:
    """End to end on a sergio-rs screen: the true network read from the data, edges from the
    knock-outs, better than chance."""
    pytest.importorskip("sergio_rs")
    from perturbflow.data.grnsim import GRNScreenConfig, simulate_grn_screen
    from perturbflow.grn.metrics import score_edges
    from perturbflow.grn.network import read_network

    rows = [
        (f"R{r}", f"T{(3 * r + t) % 12}", 1 if (r + t) % 3 else -1)
        for r in range(4)
        for t in range(5)
    ]
    path = tmp_path / "regulons.csv"
    pd.DataFrame(rows, columns=["source", "target", "sign"]).to_csv(path, index=False)
    config = GRNScreenConfig(
        network=str(path), n_genes=16, n_regulators=4, n_singles=4, n_doubles=0, n_cells=60,
        n_control_cells=60, scale_iter=20, safety_iter=50, regulator_pool_factor=1,
        min_targets=1, seed=1,
    )  # fmt: skip
    dataset = read(simulate_grn_screen(config))
    truth = read_network(dataset, genes=dataset.genes)
    edges = screen_edges(dataset)
    scores = score_edges(edges, truth, genes=dataset.genes, method="screen")
    overall = scores[scores["regulator"] == "all"].set_index("metric")["value"]
    assert overall["n_true"] == len(truth[truth["source"].isin(edges["source"])])
    assert overall["auroc"] > 0.6


def _chain_screen(seed: int = 0) -> ad.AnnData:
    """A → B → C with knock-outs of each and of a bystander D: knocking out A also lowers C."""
    rng = np.random.default_rng(seed)
    genes = ["A", "B", "C", "D", "E"]
    effects = {  # each knock-out's change of every gene's log expression
        "A": {"A": -2.0, "B": -1.0, "C": -0.8},
        "B": {"B": -2.0, "C": -1.6},
        "C": {"C": -2.0},
        "D": {"D": -2.0, "E": 0.9},
        "A+D": {"A": -2.0, "B": -1.0, "C": -0.8, "D": -2.0, "E": 0.9},
    }
    blocks, labels = [rng.normal(3.0, 0.2, (120, 5))], ["ctrl"] * 120
    for condition, change in effects.items():
        shift = np.array([change.get(g, 0.0) for g in genes])
        blocks.append(3.0 + shift + rng.normal(0.0, 0.2, (60, 5)))
        labels += [condition] * 60
    obs = pd.DataFrame({"condition": labels}, index=[f"c{i}" for i in range(len(labels))])
    return ad.AnnData(
        X=np.vstack(blocks).astype(np.float32), obs=obs, var=pd.DataFrame(index=genes)
    )


def test_regression_edges_explain_an_indirect_target_by_its_intermediate() -> None:
    chain = read(_chain_screen(), min_cells=5)
    knockouts = screen_edges(chain).set_index(["source", "target"])["score"]
    direct = regression_edges(chain).set_index(["source", "target"])
    # The knock-out of A moves C clearly, but jointly C's change is B's doing.
    assert knockouts[("A", "C")] > 10 * knockouts[("A", "E")]
    assert direct.loc[("B", "C"), "score"] > 5 * direct.loc[("A", "C"), "score"]
    assert direct.loc[("A", "B"), "score"] > 5 * direct.loc[("C", "B"), "score"]
    assert direct.loc[("B", "C"), "sign"] == 1 and direct.loc[("D", "E"), "sign"] == -1
    assert not (direct.index.get_level_values(0) == direct.index.get_level_values(1)).any()


def test_regression_needs_measured_regulators() -> None:
    chain = read(_chain_screen(), min_cells=5)
    with pytest.raises(UnknownRegulatorError):
        regression_edges(chain, regulators=["A", "NOPE"])
