"""benchmarks/start_defaults.py: job parsing and the paired differences on hand-made results."""

from __future__ import annotations

import pandas as pd
import pytest
from _scripts import load_script


def _load():
    return load_script("start_defaults")


def test_jobs_name_screen_split_and_seeds():
    script = _load()
    assert script.parse_job("runs/a:b.h5ad:combo:1-2-3") == ("runs/a:b.h5ad", "combo", [1, 2, 3])
    with pytest.raises(ValueError, match="SCREEN:SPLIT:SEEDS"):
        script.parse_job("screen:combo")
    with pytest.raises(ValueError, match="integers"):
        script.parse_job("screen:combo:1-x")


def test_paired_differences_are_variant_minus_default_per_seed():
    script = _load()
    rows = []
    # Two conditions per seed: the per-seed mean is what is paired.
    for seed, default, all_genes in [(1, 0.9, 0.8), (2, 0.7, 0.5)]:
        for condition, offset in [("A+B", 0.05), ("C+D", -0.05)]:
            for model, value in [
                ("calibrated_additive", default),
                ("all_genes", all_genes),
                ("no_propagation", default),
            ]:
                rows.append(
                    (
                        "s",
                        "combo",
                        "combo_seen2",
                        condition,
                        "mse_de20",
                        value + offset,
                        model,
                        seed,
                    )
                )
    results = pd.DataFrame(
        rows,
        columns=["screen", "split", "subgroup", "condition", "metric", "value", "model", "seed"],
    )
    table = script.paired(results).set_index("variant")
    assert table.loc["all_genes", "difference"] == pytest.approx(-0.15)
    assert table.loc["all_genes", "default"] == pytest.approx(0.8)
    assert table.loc["all_genes", "ci_low"] == pytest.approx(-0.2)
    assert table.loc["all_genes", "ci_high"] == pytest.approx(-0.1)
    # mse: lower is better, so the variant is better in both seeds.
    assert table.loc["all_genes", "default_better"] == 0
    assert table.loc["no_propagation", "difference"] == pytest.approx(0.0)
    assert "| s | combo | combo_seen2 | mse_de20 | all_genes |" in script.markdown(
        table.reset_index()[list(script.paired(results).columns)]
    )


def test_drop_singles_keeps_the_combinations_of_the_genes_it_removes(screen_data):
    script = _load()
    dataset, _ = screen_data("tiny", n_perturbed=10, n_doubles=14, seed=3)
    reduced, dropped = script.drop_singles(dataset, 0.3, seed=0)
    singles = sorted(n for n in dataset.conditions if "+" not in n and n != "ctrl")
    assert len(dropped) == 3 and set(dropped) <= set(singles)
    assert not set(dropped) & set(reduced.conditions)
    assert set(reduced.conditions) == set(dataset.conditions) - set(dropped)
    assert dropped == script.drop_singles(dataset, 0.3, seed=0)[1]  # seeded
    assert dropped != script.drop_singles(dataset, 0.3, seed=1)[1]
