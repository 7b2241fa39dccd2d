"""Tree-ensemble and correlation edges on expression with planted regulator → target links."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from perturbflow.grn.expression import correlation_edges, tree_edges
from perturbflow.grn.network import GRNInputError, UnknownRegulatorError

REGULATORS = ["R1", "R2", "R3", "R4"]
GENES = [*REGULATORS, "LIN", "QUAD", "NEG", "NOISE", "FLAT"]
FAST = dict(n_estimators=300, max_features=0.5)


def planted_expression(seed: int = 0, n_cells: int = 300) -> np.ndarray:
    """``(cells, genes)``: LIN = 2·R1, QUAD = R2² (no linear trend), NEG = -R3, NOISE and a
    constant FLAT, each with noise."""
    rng = np.random.default_rng(seed)
    regulators = rng.normal(0.0, 1.0, (n_cells, len(REGULATORS)))  # (N, 4)
    noise = rng.normal(0.0, 0.3, (n_cells, 4))  # (N, 4)
    linear = 2.0 * regulators[:, 0] + noise[:, 0]
    quadratic = regulators[:, 1] ** 2 + noise[:, 1]
    negative = -regulators[:, 2] + noise[:, 2]
    flat = np.ones(n_cells)
    return np.column_stack([regulators, linear, quadratic, negative, noise[:, 3], flat])


@pytest.fixture(scope="module")
def expression() -> np.ndarray:
    return planted_expression()


@pytest.fixture(scope="module")
def trees(expression) -> pd.DataFrame:
    return tree_edges(expression, GENES, REGULATORS, seed=0, **FAST)


def top_source(edges: pd.DataFrame, target: str) -> str:
    return edges[edges["target"] == target].sort_values("score").iloc[-1]["source"]


def test_trees_rank_planted_linear_and_nonlinear_regulators_first(trees) -> None:
    assert top_source(trees, "LIN") == "R1"
    assert top_source(trees, "QUAD") == "R2"
    assert top_source(trees, "NEG") == "R3"
    # Planted links outrank everything a target without a regulator picks up.
    planted = trees.set_index(["source", "target"])["score"]
    weakest = min(planted[("R1", "LIN")], planted[("R2", "QUAD")], planted[("R3", "NEG")])
    assert weakest > trees[trees["target"] == "NOISE"]["score"].max()
    top3 = set(zip(trees["source"][:3], trees["target"][:3], strict=True))
    assert top3 == {("R1", "LIN"), ("R2", "QUAD"), ("R3", "NEG")}


def test_trees_leave_out_self_edges_constant_targets_and_take_signs_from_correlation(trees):
    assert not (trees["source"] == trees["target"]).any()
    assert "FLAT" not in set(trees["target"])
    signs = trees.set_index(["source", "target"])["sign"]
    assert signs[("R1", "LIN")] == 1 and signs[("R3", "NEG")] == -1
    assert set(trees["target"]) >= set(REGULATORS)  # regulators are targets of the others


def test_trees_are_deterministic_per_seed(expression, trees) -> None:
    again = tree_edges(expression, GENES, REGULATORS, seed=0, **FAST)
    pd.testing.assert_frame_equal(again, trees)
    other = tree_edges(expression, GENES, REGULATORS, seed=1, targets=["NOISE"], **FAST)
    assert not np.allclose(
        other["score"].to_numpy(), trees[trees["target"] == "NOISE"]["score"].to_numpy()
    )


def test_parallel_fits_equal_serial_ones_and_targets_are_independent(expression, trees) -> None:
    parallel = tree_edges(expression, GENES, REGULATORS, seed=0, n_jobs=2, **FAST)
    pd.testing.assert_frame_equal(parallel, trees)
    # A target's scores depend on its own seed only, not on which other targets are fitted.
    alone = tree_edges(expression, GENES, REGULATORS, seed=0, targets=["QUAD"], **FAST)
    pd.testing.assert_frame_equal(alone, trees[trees["target"] == "QUAD"].reset_index(drop=True))


def test_correlation_is_the_linear_floor(expression) -> None:
    edges = correlation_edges(sp.csr_matrix(expression), GENES, REGULATORS)
    table = edges.set_index(["source", "target"])
    assert table.loc[("R1", "LIN"), "score"] == pytest.approx(
        abs(np.corrcoef(expression[:, 0], expression[:, 4])[0, 1])
    )
    assert table.loc[("R3", "NEG"), "sign"] == -1 and top_source(edges, "LIN") == "R1"
    # The quadratic link has no linear trend: correlation misses what the trees find.
    assert table.loc[("R2", "QUAD"), "score"] < 0.2
    assert "FLAT" not in set(edges["target"]) and not (edges["source"] == edges["target"]).any()


def test_bad_inputs_are_named(expression) -> None:
    with pytest.raises(UnknownRegulatorError, match="TFX"):
        correlation_edges(expression, GENES, ["R1", "TFX"])
    with pytest.raises(GRNInputError, match="one column per gene"):
        correlation_edges(expression[:, :-1], GENES, REGULATORS)
    with pytest.raises(GRNInputError, match="NaN"):
        correlation_edges(np.where(expression > 2, np.nan, expression), GENES, REGULATORS)
    with pytest.raises(GRNInputError, match="max_features"):
        tree_edges(expression, GENES, REGULATORS, max_features=3)
