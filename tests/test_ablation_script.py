"""benchmarks/ablation.py: the acceptance checks and paired differences on hand-made results."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "ablation.py"


def _load():
    spec = importlib.util.spec_from_file_location("ablation_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows(subgroup, values, seeds=(1, 2)):
    return [
        (subgroup, model, metric, value, seed)
        for (model, metric), value in values.items()
        for seed in seeds
    ]


def test_combo_acceptance_compares_with_the_combinator_and_every_mean_shift_model():
    ablation = _load()
    values = {
        ("scbig", "pearson_delta_de20"): 0.96,
        ("combinator", "pearson_delta_de20"): 0.975,
        ("linear", "pearson_delta_de20"): 0.9,
        ("ridge", "pearson_delta_de20"): 0.97,
        ("scbig", "mse_de20"): 0.2,
        ("additive", "mse_de20"): 1.0,
        ("scbig", "energy_distance"): 1.0,
        ("additive", "energy_distance"): 3.0,
        ("combinator", "energy_distance"): 0.8,
        ("linear", "energy_distance"): 1.5,
    }
    results = pd.DataFrame(
        _rows("combo_seen2", values), columns=["subgroup", "model", "metric", "value", "seed"]
    )
    table = ablation.acceptance(results, "combo").set_index("check")["holds"].to_dict()
    assert table["pearson_delta_de20 ≥ 0.95"]
    assert not table["pearson_delta_de20 ≥ combinator − 0.01"]  # 0.96 < 0.965
    assert table["pearson_delta_de20 above linear"]
    assert not table["pearson_delta_de20 above ridge"]
    assert table["mse_de20 ≤ 0.25 × additive"]
    assert table["energy ≤ 0.5 × additive"]
    assert not table["energy below every mean-shift model"]  # the combinator's 0.8
    assert "**no**" in ablation.markdown_acceptance(ablation.acceptance(results, "combo"))


def test_simulation_acceptance_uses_the_best_learned_baseline_per_subgroup():
    ablation = _load()
    rows = _rows("combo_seen0", {("scbig", "pearson_delta_de20"): 0.5})
    rows += _rows("combo_seen0", {("linear", "pearson_delta_de20"): 0.6})
    rows += _rows("unseen_single", {("scbig", "pearson_delta_de20"): 0.7})
    rows += _rows("unseen_single", {("ridge", "pearson_delta_de20"): 0.65})
    rows += _rows("unseen_single", {("additive", "pearson_delta_de20"): 0.9})  # not learned
    results = pd.DataFrame(rows, columns=["subgroup", "model", "metric", "value", "seed"])
    table = ablation.acceptance(results, "simulation").set_index("subgroup")
    assert not table.loc["combo_seen0", "holds"] and table.loc["combo_seen0", "reference"] == (
        "linear 0.600"
    )
    assert table.loc["unseen_single", "holds"]


def test_a_shortfall_below_the_printed_precision_is_marked_as_a_tie():
    ablation = _load()
    rows = _rows("combo_seen1", {("scbig", "pearson_delta_de20"): 0.8500})
    rows += _rows("combo_seen1", {("calibrated_additive", "pearson_delta_de20"): 0.8502})
    rows += _rows("unseen_single", {("scbig", "pearson_delta_de20"): 0.849})
    rows += _rows("unseen_single", {("calibrated_additive", "pearson_delta_de20"): 0.852})
    results = pd.DataFrame(rows, columns=["subgroup", "model", "metric", "value", "seed"])
    table = ablation.acceptance(results, "simulation")
    assert not table["holds"].any()  # a tie is still not "at least"
    text = ablation.markdown_acceptance(table)
    assert "| **no** (tie: -0.00020) |" in text
    assert "0.849 | calibrated_additive 0.852 | **no** |" in text


def test_paired_differences_pair_by_seed():
    ablation = _load()
    rows = [
        ("combo_seen2", "scbig", "energy_distance", value, seed)
        for seed, value in [(1, 1.0), (2, 2.0), (3, 3.0)]
    ] + [
        ("combo_seen2", "no_grc", "energy_distance", value, seed)
        for seed, value in [(1, 1.5), (2, 2.5), (3, 3.5)]
    ]
    results = pd.DataFrame(rows, columns=["subgroup", "model", "metric", "value", "seed"])
    table = ablation.paired_differences(results)
    row = table.iloc[0]
    assert row["model"] == "no_grc" and row["n_seeds"] == 3
    # Every seed differs by exactly +0.5, so the bootstrap CI collapses onto it.
    assert row["difference"] == pytest.approx(0.5)
    assert row["ci_low"] == pytest.approx(0.5) and row["ci_high"] == pytest.approx(0.5)
