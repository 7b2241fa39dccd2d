"""benchmarks/oracle_shift.py: the oracle predicts the real means of held-out conditions, and the
table states its ratio to additive."""

from __future__ import annotations

import numpy as np
import pandas as pd
from _scripts import load_script

from perturbflow.data import CONDITION_COLUMN
from perturbflow.models.base import MODELS


def _load():
    return load_script("oracle_shift")


def test_the_oracle_predicts_each_held_out_conditions_real_mean(screen_data):
    script = _load()
    assert script.ORACLE not in MODELS  # importing the script registers nothing
    dataset, split = screen_data("tiny")
    oracle = script.OracleMeanShift().fit(dataset, split)
    test = list(split.test)
    predicted = oracle.predict(test, n_cells=50, seed=0)
    for name in test:
        cells = predicted.X[predicted.obs[CONDITION_COLUMN].astype(str).to_numpy() == name]
        np.testing.assert_allclose(
            cells.mean(axis=0), dataset.mean_expression([name]).iloc[0], atol=1e-4
        )


def test_the_table_gives_the_oracles_ratio_to_additive():
    script = _load()
    rows = [
        ("s", "combo", "combo_seen2", "A+B", metric, value, model, seed)
        for seed in (1, 2)
        for metric, model, value in [
            ("energy_distance", "additive", 0.8),
            ("energy_distance", script.ORACLE, 0.4),
            ("mse_de20", "additive", 0.1),
            ("mse_de20", script.ORACLE, 0.0),
            ("pearson_delta_de20", "additive", 0.9),
        ]
    ]
    results = pd.DataFrame(
        rows,
        columns=["screen", "split", "subgroup", "condition", "metric", "value", "model", "seed"],
    )
    table = script.table(results)
    assert "| s | combo | combo_seen2 | energy_distance | 0.800 | 0.400 | 0.50 | nan |" in table
    assert "pearson_delta_de20" not in table
