"""benchmarks/ablation.py: the acceptance checks and paired differences on hand-made results."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from _scripts import load_script


def _load():
    return load_script("ablation")


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


def _run_folder(folder: Path, model: str, seeds, energy: float, shape=None, blend=None) -> Path:
    folder.mkdir()
    rows = [
        ("c", "combo_seen2", metric, value, name, seed, "screen", "combo")
        for seed in seeds
        for name, scale in ((model, 1.0), ("additive", 2.0))
        for metric, value in (("pearson_delta_de20", 0.9), ("energy_distance", energy * scale))
    ]
    columns = ["condition", "subgroup", "metric", "value", "model", "seed", "screen", "split"]
    pd.DataFrame(rows, columns=columns).to_csv(folder / "results.csv", index=False)
    weights = {"screen": "screen", "split": "combo", "model": model, "kind": "combo_seen2"}
    table = pd.DataFrame([{**weights, "seed": s, "weight": 0.0, "n_conditions": 6} for s in seeds])
    if shape is not None:
        table["shape_weight"] = shape
    if blend is not None:
        table["combinator_weight"] = blend
    table.to_csv(folder / "mean_weights.csv", index=False)
    (folder / "command.txt").write_text(f"made {folder.name}\n")
    return folder


def test_merge_keeps_the_first_folder_s_cells_and_states_every_command(tmp_path, monkeypatch):
    import sys

    merge = load_script("merge_runs")
    first = _run_folder(tmp_path / "new", "scbig_default", (1, 2), energy=0.4, shape=3.0, blend=0.5)
    second = _run_folder(tmp_path / "old", "scbig_default", (2, 3), energy=0.6)
    out = tmp_path / "merged"
    argv = ["merge_runs.py", "--out", str(out), "--reference", "scbig_default"]
    monkeypatch.setattr(sys, "argv", [*argv, str(first), str(second)])
    merge.main()
    results = pd.read_csv(out / "results.csv")
    energy = results[(results["metric"] == "energy_distance") & (results["model"] != "additive")]
    # Seed 2 is in both folders: the first one's value is kept.
    assert energy.set_index("seed")["value"].to_dict() == {1: 0.4, 2: 0.4, 3: 0.6}
    command = (out / "command.txt").read_text()
    assert "made new" in command and "made old" in command and "--reference" in command
    table = (out / "table.md").read_text()
    assert "energy ≤ 0.5 × additive" in table  # the checks are about the named reference
    # Shape weights and combinator shares where a run recorded them, "-" where it predates them.
    row = (
        "| screen | combo | scbig_default | combo_seen2 | 0, 0, 0 | 3, 3 | 0.5, 0.5 | - | 6, 6, 6 |"
    )
    assert row in table
    assert (
        _load()
        .weights_table(pd.read_csv(second / "mean_weights.csv"))
        .endswith("| screen | combo | scbig_default | combo_seen2 | 0, 0 | - | - | - | 6, 6 |\n")
    )


def test_combo_acceptance_of_a_variant_alone_skips_the_comparison_with_baselines():
    ablation = _load()
    values = {("scbig", "pearson_delta_de20"): 0.96, ("scbig", "energy_distance"): 1.0}
    values |= {("scbig", "mse_de20"): 0.2}
    results = pd.DataFrame(
        _rows("combo_seen2", values), columns=["subgroup", "model", "metric", "value", "seed"]
    )
    table = ablation.acceptance(results, "combo").set_index("check")
    assert "energy below every mean-shift model" not in table.index
    assert table.loc["pearson_delta_de20 ≥ 0.95", "holds"]


def test_weights_table_says_per_seed_whether_the_start_took_pooled_effects():
    ablation = _load()
    rows = [
        {
            "screen": "s",
            "split": "combo",
            "model": "scbig_default",
            "kind": "combo_seen2",
            "seed": seed,
            "weight": 0.0,
            "shape_weight": 1.0,
            "combinator_weight": 0.5,
            "start_pooled": pooled,
            "n_conditions": 4,
        }
        for seed, pooled in ((1, True), (2, False))
    ]
    table = ablation.weights_table(pd.DataFrame(rows))
    assert "| pooled start over seeds |" in table
    assert "| 0, 0 | 1, 1 | 0.5, 0.5 | yes, no | 4, 4 |" in table
    older = ablation.weights_table(pd.DataFrame(rows).drop(columns="start_pooled"))
    assert "| 0.5, 0.5 | - | 4, 4 |" in older
