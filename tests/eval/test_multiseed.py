"""Multi-seed benchmarks: resumable runs and the comparison summary."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from perturbflow.data import read
from perturbflow.data.synthetic import simulate
from perturbflow.eval import multiseed
from perturbflow.eval.multiseed import benchmark_summary, run_benchmark

SMALL = dict(
    n_genes=50,
    n_programs=4,
    n_perturbed=8,
    n_unmeasured=0,
    n_doubles=10,
    n_control_cells=150,
    n_cells_per_condition=20,
    seed=0,
)


@pytest.fixture(scope="module")
def dataset():
    return read(simulate(**SMALL))


def test_run_writes_files_and_covers_every_cell(dataset, tmp_path):
    result = run_benchmark(
        dataset, tmp_path, split_kind="combo", seeds=[1, 2], models="additive,control_mean"
    )
    for name in ("results.csv", "summary.csv", "timings.csv"):
        assert (tmp_path / name).exists()
    assert sorted(p.name for p in (tmp_path / "splits").iterdir()) == [
        "combo_seed1.json",
        "combo_seed2.json",
    ]
    deltas = pd.read_csv(tmp_path / "predictions" / "additive_seed1.csv", index_col=0)
    assert set(deltas.index) == set(result.splits[1].test)
    assert list(deltas.columns) == list(dataset.genes)
    cells = set(zip(result.results["model"], result.results["seed"], strict=True))
    assert cells == {(m, s) for m in ("additive", "control_mean", "noise_ceiling") for s in (1, 2)}
    for seed, split in result.splits.items():
        evaluated = set(result.results.loc[result.results["seed"] == seed, "condition"])
        assert evaluated == set(split.test)


def test_resume_skips_finished_cells(dataset, tmp_path, monkeypatch):
    run_benchmark(dataset, tmp_path, split_kind="combo", seeds=[1], models="additive")
    fitted = []
    original = multiseed.get_model

    def counting(name, config=None):
        fitted.append(name)
        return original(name, config)

    monkeypatch.setattr(multiseed, "get_model", counting)
    result = run_benchmark(
        dataset, tmp_path, split_kind="combo", seeds=[1, 2], models="additive", resume=True
    )
    assert fitted == ["additive"]  # only seed 2; seed 1 came from results.csv
    assert sorted(result.results["seed"].unique()) == [1, 2]
    assert len(result.results.query("model == 'additive' and seed == 1")) > 0


def test_resume_refuses_a_different_split(dataset, tmp_path):
    run_benchmark(dataset, tmp_path, split_kind="combo", seeds=[1], models="additive")
    (tmp_path / "splits" / "combo_seed1.json").write_text(
        (tmp_path / "splits" / "combo_seed1.json").read_text().replace('"seed": 1', '"seed": 7')
    )
    with pytest.raises(ValueError, match="differs"):
        run_benchmark(
            dataset, tmp_path, split_kind="combo", seeds=[1], models="additive", resume=True
        )


@pytest.fixture(scope="module")
def three_lines():
    """SMALL's singles dealt to three lines that differ by a constant offset per gene."""
    base = simulate(**{**SMALL, "n_doubles": 0, "n_cells_per_condition": 60})
    turn = base.obs.groupby("condition", observed=True).cumcount().to_numpy() % 3  # (N,)
    offsets = np.random.default_rng(1).uniform(0.0, 2.0, (3, base.n_vars))  # (3, G)
    adata = ad.AnnData(X=base.X + offsets[turn], obs=base.obs.copy(), var=base.var.copy())
    adata.obs["cell_type"] = np.array(["A", "B", "C"])[turn]
    return read(adata, cell_type_key="cell_type")


def test_cross_cell_line_benchmark(three_lines, tmp_path):
    result = run_benchmark(
        three_lines,
        tmp_path,
        split_kind="cross_cell_line",
        seeds=[1, 2, 3],
        models="additive,control_mean",
    )
    results = pd.read_csv(tmp_path / "results.csv")
    assert set(results["subgroup"]) == {"cross_line_A", "cross_line_B", "cross_line_C"}
    assert sorted(p.name for p in (tmp_path / "splits").iterdir()) == [
        f"cross_cell_line_seed{seed}.json" for seed in (1, 2, 3)
    ]
    for seed, split in result.splits.items():
        evaluation = result.eval_datasets[seed]
        assert set(evaluation.adata.obs["cell_type"]) == {split.params["target_line"]}
        scored = set(results.loc[results["seed"] == seed, "condition"])
        assert scored == set(split.test)
    # Shared effects, offset-only lines: the centred additive transfer nearly recovers the truth.
    additive = results.query("model == 'additive' and metric == 'pearson_delta_de20'")
    assert additive["value"].mean() > 0.95
    summary = result.summary.set_index(["subgroup", "model", "metric"])
    assert summary.loc[("cross_line_A", "additive", "pearson_delta_de20"), "n_seeds"] == 1
    # Resuming rebuilds the same splits from the cells and recomputes nothing.
    again = run_benchmark(
        three_lines,
        tmp_path,
        split_kind="cross_cell_line",
        seeds=[1, 2, 3],
        models="additive,control_mean",
        resume=True,
    )
    assert len(again.results) == len(result.results)


def _table():
    rows = []
    # Two conditions, two seeds; "good" beats additive on pearson in 3 of 4 pairs.
    values = {
        "additive": [0.5, 0.5, 0.5, 0.5],
        "good": [0.7, 0.6, 0.5, 0.9],
        "noise_ceiling": [1.0, 1.0, 1.0, 1.0],
    }
    for model, vals in values.items():
        for (condition, seed), value in zip(
            [("A", 1), ("B", 1), ("A", 2), ("B", 2)], vals, strict=True
        ):
            rows.append((condition, "g", "pearson_delta", value, model, seed))
            rows.append((condition, "g", "mse_de20", 1.0 - value, model, seed))
    return pd.DataFrame(rows, columns=["condition", "subgroup", "metric", "value", "model", "seed"])


def test_summary_reference_values():
    summary = benchmark_summary(_table()).set_index(["model", "metric"])
    good = summary.loc[("good", "pearson_delta")]
    assert good["mean"] == pytest.approx((0.65 + 0.7) / 2)
    assert good["sd"] == pytest.approx(pd.Series([0.65, 0.7]).std())
    assert good["n_seeds"] == 2 and good["n_conditions"] == 2
    assert good["win_rate_vs_additive"] == pytest.approx((1 + 1 + 0.5 + 1) / 4)
    assert good["paired_diff_vs_additive"] == pytest.approx((0.2 + 0.1 + 0.0 + 0.4) / 4)
    assert good["fraction_of_ceiling"] == pytest.approx(0.675)
    # Lower-is-better metric: the paired difference is signed so positive is still better.
    mse = summary.loc[("good", "mse_de20")]
    assert mse["paired_diff_vs_additive"] == pytest.approx((0.2 + 0.1 + 0.0 + 0.4) / 4)
    assert mse["fraction_of_ceiling"] == pytest.approx(0.0 / 0.325)
    assert summary.loc[("additive", "pearson_delta")]["win_rate_vs_additive"] == 0.5
