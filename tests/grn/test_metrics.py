"""Edge metrics on hand-made cases whose AUPRC, AUROC and EPR are known.

The base case: regulator R, genes R, A, B, C, D, so four candidates R→A…R→D (R→R is never a
candidate), two of them true (R→A, R→C): density 1/2, k = 2.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from perturbflow.grn.metrics import METRICS, epr_permutation_pvalue, score_edges
from perturbflow.grn.network import EdgeTableError, NetworkCoverageError, UnknownRegulatorError

GENES = ["R", "A", "B", "C", "D"]
TRUTH = pd.DataFrame({"source": ["R", "R"], "target": ["A", "C"], "sign": [1, -1]})


def predicted(**scores: float) -> pd.DataFrame:
    return pd.DataFrame(
        {"source": "R", "target": list(scores), "score": [float(v) for v in scores.values()]}
    )


def overall(edges: pd.DataFrame, truth: pd.DataFrame = TRUTH, **kwargs) -> dict[str, float]:
    table = score_edges(edges, truth, genes=GENES, **kwargs)
    return table[table["regulator"] == "all"].set_index("metric")["value"].to_dict()


def test_a_perfect_ranking() -> None:
    values = overall(predicted(A=4, C=3, B=2, D=1))
    assert values == {
        "auprc": 1.0,
        "auroc": 1.0,
        "auprc_ratio": 2.0,
        "epr": 2.0,
        "n_true": 2.0,
        "n_candidates": 4.0,
    }


def test_a_reversed_ranking() -> None:
    values = overall(predicted(A=1, C=2, B=3, D=4))
    # Order D, B, C, A: true edges at ranks 3 and 4, AP = ½·⅓ + ½·½.
    assert values["auprc"] == pytest.approx(5 / 12)
    assert values["auroc"] == 0.0 and values["epr"] == 0.0
    assert values["auprc_ratio"] == pytest.approx(5 / 6)


def test_a_case_computed_by_hand_with_a_missing_edge() -> None:
    # R→D is not predicted: it scores 0. Order A (true), B, C (true), D.
    values = overall(predicted(A=0.9, B=0.8, C=0.7))
    assert values["auprc"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert values["auroc"] == pytest.approx(3 / 4)  # A>B, A>D, C>D win; C<B loses
    assert values["epr"] == pytest.approx((1 / 2) / (1 / 2))  # top 2 = A, B


def test_ties_are_handled_deterministically() -> None:
    values = overall(predicted(A=0.9, B=0.5, C=0.5, D=0.5))
    # AP: threshold 0.9 gives P=1 at R=½, threshold 0.5 gives P=½ at R=1.
    assert values["auprc"] == pytest.approx(0.75)
    # AUROC: A beats B and D; C ties B and D (½ each): 3 of 4 pairs.
    assert values["auroc"] == pytest.approx(0.75)
    # EPR: A fills one top-2 slot, the tie block {B, C, D} the other, ⅓ of it true.
    assert values["epr"] == pytest.approx((1 + 1 / 3) / 2 / 0.5)
    # Nothing predicted: every candidate ties at 0, a random ranking.
    empty = score_edges(predicted(), TRUTH, genes=GENES, regulators=["R"])
    values = empty[empty["regulator"] == "all"].set_index("metric")["value"]
    assert values["auroc"] == 0.5 and values["epr"] == pytest.approx(1.0)


def test_long_format_per_regulator_rows_and_candidates(caplog) -> None:
    edges = pd.concat(
        [
            predicted(A=4, C=3, B=2, D=1),
            pd.DataFrame({"source": ["A"], "target": ["B"], "score": [1.0]}),
        ]
    )
    truth = pd.concat(
        [TRUTH, pd.DataFrame({"source": ["Q", "R"], "target": ["A", "Z"], "sign": [1, 1]})]
    )
    with caplog.at_level(logging.INFO, logger="perturbflow.grn.metrics"):
        table = score_edges(edges, truth, genes=GENES, method="demo")
    assert list(table.columns) == ["method", "regulator", "metric", "value"]
    assert set(table["method"]) == {"demo"}
    # A has no true edge: no rows of its own; "all" rows come first, metrics in registry order.
    assert table["regulator"].unique().tolist() == ["all", "R"]
    assert table["metric"].tolist()[: len(METRICS)] == list(METRICS)
    values = table[table["regulator"] == "all"].set_index("metric")["value"]
    assert values["n_candidates"] == 8 and values["n_true"] == 2  # 2 regulators × 4 targets
    assert "ignored 2 true edges and 0 predicted edges outside the candidates" in caplog.text


def test_regulators_by_name() -> None:
    table = score_edges(predicted(A=1.0), TRUTH, genes=GENES, regulators=["R", "B"])
    assert table.query("regulator == 'all' and metric == 'n_candidates'")["value"].item() == 8
    with pytest.raises(UnknownRegulatorError, match="NOPE"):
        score_edges(predicted(A=1.0), TRUTH, genes=GENES, regulators=["NOPE"])


def test_no_true_candidate_and_bad_edges_are_errors() -> None:
    other = pd.DataFrame({"source": ["X"], "target": ["A"], "sign": [1]})
    with pytest.raises(NetworkCoverageError, match="none of the 4 candidates"):
        score_edges(predicted(A=1.0), other, genes=GENES)
    with pytest.raises(EdgeTableError, match="'score'"):
        score_edges(predicted(A=1.0).drop(columns="score"), TRUTH, genes=GENES)


def test_auroc_is_undefined_when_all_candidates_of_a_regulator_are_true() -> None:
    truth = pd.DataFrame({"source": "R", "target": ["A", "B", "C", "D"]})
    values = overall(predicted(A=1, B=2), truth=truth)
    assert np.isnan(values["auroc"]) and values["auprc"] == 1.0 and values["epr"] == 1.0


def test_permutation_pvalue_separates_signal_from_chance() -> None:
    rng = np.random.default_rng(0)
    genes = [f"G{i}" for i in range(40)]
    regulators = genes[:3]
    truth = pd.DataFrame(
        [(r, t) for r in regulators for t in rng.choice(genes[3:], 4, replace=False)],
        columns=["source", "target"],
    )
    true_pairs = set(zip(truth["source"], truth["target"], strict=True))
    pairs = [(r, t) for r in regulators for t in genes if t != r]
    perfect = pd.DataFrame(
        [(r, t, 1.0 + ((r, t) in true_pairs)) for r, t in pairs],
        columns=["source", "target", "score"],
    )
    noise = perfect.assign(score=rng.uniform(size=len(perfect)))
    kwargs = dict(genes=genes, regulators=regulators, n_permutations=500)
    p_perfect = epr_permutation_pvalue(perfect, truth, **kwargs)
    assert p_perfect == pytest.approx(1 / 501)
    p_noise = epr_permutation_pvalue(noise, truth, **kwargs)
    assert 0.05 < p_noise <= 1.0
    assert epr_permutation_pvalue(noise, truth, **kwargs) == p_noise  # seeded
