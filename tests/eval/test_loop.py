"""The run loop: files, resume, context splits, separate seeds, run metadata; and the summary."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from perturbflow.data import read
from perturbflow.eval import loop as run_module
from perturbflow.eval.loop import RunSpec, Seeds, model_runs, read_runs, resolve_models, run
from perturbflow.eval.summary import benchmark_summary
from perturbflow.models import MODELS
from perturbflow.models.peers import PEERS

# The "tiny" preset of tests/conftest.py, a little wider.
SMALL = dict(n_genes=50, n_doubles=10, n_control_cells=150, n_cells_per_condition=20)


@pytest.fixture(scope="module")
def dataset(simulated_screen):
    return read(simulated_screen("tiny", **SMALL))


def test_run_writes_files_and_covers_every_cell(dataset, tmp_path):
    result = run(dataset, "combo", model_runs("additive,control_mean"), [1, 2], out=tmp_path)
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
    run(dataset, "combo", model_runs("additive"), [1], out=tmp_path)
    fitted = []
    original = run_module.get_model

    def counting(name, config=None):
        fitted.append(name)
        return original(name, config)

    monkeypatch.setattr(run_module, "get_model", counting)
    result = run(dataset, "combo", model_runs("additive"), [1, 2], out=tmp_path, resume=True)
    assert fitted == ["additive"]  # only seed 2; seed 1 came from results.csv
    assert sorted(result.results["seed"].unique()) == [1, 2]
    assert len(result.results.query("model == 'additive' and seed == 1")) > 0


def test_resume_refuses_a_different_split(dataset, tmp_path):
    run(dataset, "combo", model_runs("additive"), [1], out=tmp_path)
    (tmp_path / "splits" / "combo_seed1.json").write_text(
        (tmp_path / "splits" / "combo_seed1.json").read_text().replace('"seed": 1', '"seed": 7')
    )
    with pytest.raises(ValueError, match="differs"):
        run(dataset, "combo", model_runs("additive"), [1], out=tmp_path, resume=True)


@pytest.fixture(scope="module")
def three_lines(simulated_screen):
    """SMALL's singles dealt to three lines that differ by a constant offset per gene."""
    base = simulated_screen("tiny", **{**SMALL, "n_doubles": 0, "n_cells_per_condition": 60})
    turn = base.obs.groupby("condition", observed=True).cumcount().to_numpy() % 3  # (N,)
    offsets = np.random.default_rng(1).uniform(0.0, 2.0, (3, base.n_vars))  # (3, G)
    adata = ad.AnnData(X=base.X + offsets[turn], obs=base.obs.copy(), var=base.var.copy())
    adata.obs["cell_type"] = np.array(["A", "B", "C"])[turn]
    return read(adata, cell_type_key="cell_type")


def test_cross_cell_line_benchmark(three_lines, tmp_path):
    result = run(
        three_lines,
        "cross_cell_line",
        model_runs("additive,control_mean"),
        [1, 2, 3],
        out=tmp_path,
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
    again = run(
        three_lines,
        "cross_cell_line",
        model_runs("additive,control_mean"),
        [1, 2, 3],
        out=tmp_path,
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


# -- model names --------------------------------------------------------------------------------


def test_all_is_every_builtin_model_without_peers():
    names = [spec.model for spec in model_runs("all")]
    assert names == sorted(name for name in MODELS if name not in PEERS)
    assert {"additive", "control_mean", "scbig"} <= set(names)
    assert not set(names) & set(PEERS)


def test_all_can_be_extended_and_duplicates_collapse():
    assert resolve_models("additive, all") == ["additive"] + [
        name for name in resolve_models("all") if name != "additive"
    ]
    assert resolve_models(["ridge", "ridge"]) == ["ridge"]


def test_unknown_and_empty_names_are_rejected():
    with pytest.raises(KeyError, match=r"unknown model\(s\) \['nope'\]"):
        resolve_models("additive,nope")
    with pytest.raises(KeyError, match="unknown model"):
        resolve_models([])


def test_a_missing_peer_names_the_extra(monkeypatch):
    registered = {name: cls for name, cls in MODELS.items() if name not in PEERS}
    monkeypatch.setattr("perturbflow.eval.loop.MODELS", registered)
    with pytest.raises(KeyError, match=r"perturbflow\[peers\]"):
        resolve_models("all,gears")


# -- run specs, seeds and metadata --------------------------------------------------------------


def test_runs_of_one_model_with_different_options_are_labelled_apart(dataset):
    runs = [
        RunSpec("ridge_a1", "ridge", {"alpha": 1.0}),
        RunSpec("ridge_a1000", "ridge", {"alpha": 1000.0}),
    ]
    result = run(dataset, "combo", runs, [1], noise_ceiling_row=False)
    assert set(result.results["model"]) == {"ridge_a1", "ridge_a1000"}
    mse = result.results.query("metric == 'mse_de20'").pivot(
        index="condition", columns="model", values="value"
    )
    assert not np.allclose(mse["ridge_a1"], mse["ridge_a1000"])  # the options reached the model
    with pytest.raises(ValueError, match="unique"):
        run(dataset, "combo", [runs[0], runs[0]], [1])


def test_each_seed_can_be_varied_alone(dataset):
    seen = []

    def record(spec, seeds, model):
        seen.append((seeds.split, model.config.seed))

    runs = [RunSpec("ridge", "ridge")]
    base = run(dataset, "combo", runs, [Seeds(split=1)], on_fitted=record)
    other_model = run(dataset, "combo", runs, [Seeds(split=1, model=9)], on_fitted=record)
    other_sampling = run(dataset, "combo", runs, [Seeds(split=1, sampling=9)], on_fitted=record)
    assert seen == [(1, 1), (1, 9), (1, 1)]  # the model seed defaults to the split seed
    assert base.splits[1] == other_model.splits[1] == other_sampling.splits[1]

    def values(result, metric):
        table = result.results.query("metric == @metric and model == 'ridge'")
        return table.set_index("condition")["value"].sort_index()

    # The sampling seed draws the evaluation's cell subsample (energy distance), not the means.
    pd.testing.assert_series_equal(
        values(base, "pearson_delta"), values(other_sampling, "pearson_delta")
    )
    assert not np.allclose(
        values(base, "energy_distance"), values(other_sampling, "energy_distance")
    )
    # Every table still names the replicate by its split seed.
    assert set(other_sampling.results["seed"]) == {1}


def test_run_metadata_says_which_runs_wrote_programs(dataset, tmp_path, monkeypatch):
    original = run_module.get_model

    def with_programs(name, config=None):
        model = original(name, config)
        if name == "control_mean":
            model.programs_ = pd.DataFrame({"gene": list(dataset.genes), "program": 0})
        return model

    monkeypatch.setattr(run_module, "get_model", with_programs)
    runs = [RunSpec("mean", "control_mean"), RunSpec("add", "additive")]
    result = run(dataset, "combo", runs, [1], out=tmp_path)
    stored = read_runs(tmp_path)
    assert stored == result.runs
    assert stored["mean"]["model"] == "control_mean" and stored["mean"]["programs"] is True
    assert stored["add"]["programs"] is False and stored["add"]["peer"] is False
    assert (tmp_path / "programs" / "mean_seed1.csv").exists()
    assert not (tmp_path / "programs" / "add_seed1.csv").exists()


def test_score_false_only_fits_and_predicts(dataset):
    result = run(dataset, "combo", [RunSpec("additive", "additive")], [1], score=False)
    assert result.results.empty
    assert list(result.timings["model"]) == ["additive"]
    assert (result.timings[["fit_s", "predict_s"]] >= 0).all().all()


def test_cross_context_split_holds_out_conditions_of_one_context(simulated_screen, tmp_path):
    adata = simulated_screen("tiny", n_contexts=2, control_context_fractions=(0.7, 0.3))
    dataset = read(adata, context_key="context")
    result = run(dataset, "cross_context", model_runs("additive"), [1, 2], out=tmp_path)
    results = pd.read_csv(tmp_path / "results.csv")
    assert set(results["subgroup"]) == {"cross_context_ctx0", "cross_context_ctx1"}
    for seed, split in result.splits.items():
        assert split.kind == "cross_context" and split.params["cell_type_key"] == "context"
        target = split.params["target_line"]
        assert set(result.eval_datasets[seed].adata.obs["context"]) == {target}
    # Same effects in both contexts, baseline offsets only: the transferred additive prediction
    # follows the held-out context's changes (0.89 measured; offsets bend responses a little).
    additive = results.query("model == 'additive' and metric == 'pearson_delta_de20'")
    assert additive["value"].mean() > 0.8


def test_cross_context_needs_two_contexts(simulated_screen, tmp_path):
    from perturbflow.data.contexts import ContextError

    adata = simulated_screen("tiny")
    adata.obs["context"] = "only"
    dataset = read(adata, cell_type_key="context")
    with pytest.raises(ContextError, match="at least 2 contexts"):
        run(dataset, "cross_context", model_runs("additive"), [1], out=tmp_path)
