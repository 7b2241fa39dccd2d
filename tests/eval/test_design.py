"""Ranking untested pairs by predicted interaction and uncertainty."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from perturbflow.data.conditions import parse_condition
from perturbflow.eval.design import DESIGN_COLUMNS, candidate_pairs, rank_pairs
from perturbflow.eval.loop import RunSpec


@pytest.fixture(scope="module")
def screen(screen_data):
    dataset, _ = screen_data("tiny")
    return dataset


def test_candidates_are_the_unmeasured_pairs_of_measured_singles(screen):
    pairs = candidate_pairs(screen)
    singles = {n for n in screen.conditions if len(parse_condition(n)) == 1}
    assert pairs and not set(pairs) & set(screen.conditions)
    assert all(parse_condition(p) <= singles for p in pairs)
    n = len(singles)
    measured_doubles = sum(1 for c in screen.conditions if len(parse_condition(c)) == 2)
    assert len(pairs) == n * (n - 1) // 2 - measured_doubles
    with pytest.raises(ValueError, match="no measured single"):
        candidate_pairs(screen, genes=["NOT_A_GENE"])


def test_additive_model_predicts_no_interaction_and_ranks_by_uncertainty(screen):
    pairs = candidate_pairs(screen)[:6]
    table = rank_pairs(screen, RunSpec("additive", "additive"), candidates=pairs, seeds=(0, 1, 2))
    assert list(table.columns) == list(DESIGN_COLUMNS)
    assert sorted(table["condition"]) == sorted(pairs)
    # The additive model's prediction is the sum of bootstrap singles: no systematic deviation
    # beyond the resampling noise, which is also its uncertainty.
    assert (table["interaction"] < 3 * table["uncertainty"] + 1e-6).all()
    assert list(table["rank"]) == [1, 2, 3, 4, 5, 6]
    assert table["score"].is_monotonic_decreasing


def test_the_same_seeds_give_the_same_ranking_and_kappa_reorders(screen):
    pairs = candidate_pairs(screen)[:5]
    spec = RunSpec("combinator", "combinator")
    first = rank_pairs(screen, spec, candidates=pairs, seeds=(0, 1))
    again = rank_pairs(screen, spec, candidates=pairs, seeds=(0, 1))
    pd.testing.assert_frame_equal(first, again)
    by_interaction = rank_pairs(screen, spec, candidates=pairs, seeds=(0, 1), kappa=0.0)
    order = by_interaction.sort_values("interaction", ascending=False)["condition"]
    assert list(by_interaction["condition"]) == list(order)
    assert np.allclose(by_interaction["score"], by_interaction["interaction"])


def test_bad_requests_are_refused(screen):
    spec = RunSpec("additive", "additive")
    with pytest.raises(ValueError, match="at least 2 seeds"):
        rank_pairs(screen, spec, seeds=(0,))
    with pytest.raises(ValueError, match="kappa"):
        rank_pairs(screen, spec, kappa=-1)
    with pytest.raises(ValueError, match="pairs of genes"):
        rank_pairs(screen, spec, candidates=["G0001"])


def test_cli_writes_the_ranked_pairs_and_refuses_to_overwrite(tmp_path, simulated_screen):
    from typer.testing import CliRunner

    from perturbflow.cli import app

    path = tmp_path / "screen.h5ad"
    simulated_screen("tiny").write_h5ad(path)
    out = tmp_path / "ranked.csv"
    args = ["design", str(path), "--model", "additive", "--seeds", "0,1", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out)
    assert list(table.columns) == list(DESIGN_COLUMNS) and table["rank"].iloc[0] == 1
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 1 and "--overwrite" in again.output
