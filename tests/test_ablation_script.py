"""benchmarks/ablation.py: the acceptance check on a hand-made results table."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "ablation.py"


def _load():
    spec = importlib.util.spec_from_file_location("ablation_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_acceptance_compares_with_the_best_mean_shift_baseline():
    ablation = _load()
    energy = {"scbig": 2.0, "additive": 3.0, "control_mean": 4.0, "linear": 1.5, "ridge": 5.0}
    energy["nearest_neighbor"] = 6.0
    rows = [
        ("combo_seen2", model, "energy_distance", value, seed)
        for model, value in energy.items()
        for seed in (1, 2)
    ]
    rows += [
        ("combo_seen2", "scbig", "pearson_delta_de20", 0.9, 1),
        ("combo_seen2", "additive", "pearson_delta_de20", 0.8, 1),
        ("unseen_single", "scbig", "energy_distance", 1.0, 1),
    ] + [("unseen_single", m, "energy_distance", 2.0, 1) for m in ablation.BASELINES]
    results = pd.DataFrame(rows, columns=["subgroup", "model", "metric", "value", "seed"])
    table = ablation.acceptance(results).set_index(["subgroup", "check"])
    energy_check = table.loc[("combo_seen2", "energy below every mean-shift baseline")]
    assert not energy_check["holds"] and energy_check["reference"] == "linear 1.500"
    assert table.loc[("combo_seen2", "pearson_delta_de20 at least additive's"), "holds"]
    assert table.loc[("unseen_single", "energy below every mean-shift baseline"), "holds"]
    assert "**no**" in ablation.markdown_acceptance(table.reset_index())
