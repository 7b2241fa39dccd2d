"""End-to-end tests of every CLI command on the shipped synthetic data."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from perturbflow.cli import app
from perturbflow.eval.metrics import METRICS

runner = CliRunner()
BASELINES = "control_mean,additive,linear,ridge,nearest_neighbor"


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    # The issue-3 acceptance concerns the baselines; scbig's demo run is measured by
    # benchmarks/ablation.py, not by a unit test.
    result = runner.invoke(app, ["demo", "--out", str(out), "--models", BASELINES])
    assert result.exit_code == 0, result.output
    return out, result.output


def test_demo_writes_table_and_files(demo_run):
    out, output = demo_run
    for name in ("results.csv", "summary.csv", "split.json", "metrics.png", "timings.csv"):
        assert (out / name).stat().st_size > 0, name
    assert "perturbflow demo" in output and "noise_ceiling" in output and "additive" in output
    results = pd.read_csv(out / "results.csv")
    assert list(results.columns) == ["condition", "subgroup", "metric", "value", "model", "seed"]
    split = json.loads((out / "split.json").read_text())
    assert set(results["condition"]) == set(split["test"])
    assert {"control_mean", "additive", "linear", "ridge", "nearest_neighbor"} <= set(
        results["model"]
    )


def _subgroup_means(out):
    results = pd.read_csv(out / "results.csv")
    return results.groupby(["subgroup", "metric", "model"])["value"].mean().unstack("model")


def test_demo_additive_beats_control_mean_on_combo_subgroups(demo_run):
    means = _subgroup_means(demo_run[0])
    combos = [subgroup for subgroup in means.index.levels[0] if subgroup.startswith("combo")]
    assert len(combos) == 3
    for subgroup in combos:
        for metric in ("pearson_delta", "pearson_delta_de20", "mse_de20", "energy_distance"):
            additive, control = means.loc[(subgroup, metric), ["additive", "control_mean"]]
            if metric.startswith("pearson"):
                # control_mean predicts no change: its correlation is undefined, not a number.
                assert np.isnan(control) and additive > 0.3, (subgroup, metric, additive)
                continue
            better = additive > control if METRICS[metric].higher_is_better else additive < control
            assert better, (subgroup, metric, additive, control)


def test_demo_noise_ceiling_above_every_model(demo_run):
    means = _subgroup_means(demo_run[0])
    for (subgroup, metric), row in means.iterrows():
        if METRICS[metric].kind == "de_overlap":
            # A half's DE test has half the cells a model's prediction has, so the split-half
            # overlap is no bound on a model's (eval.evaluate.noise_ceiling says why).
            continue
        ceiling, models = row["noise_ceiling"], row.drop("noise_ceiling")
        if METRICS[metric].higher_is_better:
            # Bounded metrics may tie at their best value (e.g. all directions right).
            assert ceiling >= models.max() and (ceiling > models.max() or ceiling == 1.0), (
                subgroup,
                metric,
            )
        else:
            assert ceiling < models.min(), (subgroup, metric)


def test_demo_leaves_the_de_overlap_to_the_benchmark(demo_run):
    # The rank test per gene and condition costs more than the demo's baselines; --de-overlap
    # turns it on.
    metrics = set(pd.read_csv(demo_run[0] / "results.csv")["metric"])
    assert "pearson_delta_de20" in metrics
    assert not any(name.startswith("overlap_at") for name in metrics)


def test_demo_refuses_to_overwrite_without_flag(demo_run, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = runner.invoke(app, ["demo", "--out", str(out), "--models", "additive"])
    assert result.exit_code == 1
    assert "--overwrite" in result.output
    assert (out / "notes.txt").read_text() == "mine"
    assert not (out / "results.csv").exists()


def test_demo_unknown_model_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["demo", "--out", str(tmp_path / "x"), "--models", "gears2"])
    assert result.exit_code == 1
    assert "gears2" in result.output and "additive" in result.output


@pytest.fixture(scope="module")
def data_file(tmp_path_factory, simulated_screen):
    path = tmp_path_factory.mktemp("data") / "screen.h5ad"
    adata = simulated_screen("small")
    adata.obs["perturbation"] = adata.obs["condition"].astype(str)
    del adata.obs["condition"]
    adata.write_h5ad(path)
    return path


def test_fit_predict_evaluate_round_trip(data_file, tmp_path):
    checkpoint = tmp_path / "additive.npz"
    before = data_file.read_bytes()
    fitted = runner.invoke(
        app,
        [
            "fit",
            str(data_file),
            "--out",
            str(checkpoint),
            "--model",
            "additive",
            "--condition-key",
            "perturbation",
            "--split-kind",
            "combo",
        ],
    )
    assert fitted.exit_code == 0, fitted.output
    split_path = tmp_path / "additive.split.json"
    assert checkpoint.exists() and split_path.exists()

    predictions = tmp_path / "pred.h5ad"
    predicted = runner.invoke(
        app,
        ["predict", str(checkpoint), "--split", str(split_path), "--out", str(predictions)],
    )
    assert predicted.exit_code == 0, predicted.output
    split = json.loads(split_path.read_text())
    cells = ad.read_h5ad(predictions)
    assert cells.n_obs == 100 * len(split["test"])
    assert set(cells.obs["perturbflow_condition"]) == set(split["test"])

    metrics = tmp_path / "metrics.csv"
    evaluated = runner.invoke(
        app,
        [
            "evaluate",
            str(data_file),
            "--predictions",
            str(predictions),
            "--split",
            str(split_path),
            "--out",
            str(metrics),
            "--condition-key",
            "perturbation",
        ],
    )
    assert evaluated.exit_code == 0, evaluated.output
    table = pd.read_csv(metrics)
    assert set(table["model"]) == {"additive", "noise_ceiling"}
    assert set(table["condition"]) == set(split["test"])
    assert data_file.read_bytes() == before


def test_fit_with_yaml_config_and_unknown_option(data_file, tmp_path):
    config = tmp_path / "ridge.yaml"
    config.write_text("alpha: 3.0\nn_components: 8\n")
    ok = runner.invoke(
        app,
        ["fit", str(data_file), "--out", str(tmp_path / "r.npz"), "--model", "ridge"]
        + ["--config", str(config), "--condition-key", "perturbation"],
    )
    assert ok.exit_code == 0, ok.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("alpah: 3.0\n")
    failed = runner.invoke(
        app,
        ["fit", str(data_file), "--out", str(tmp_path / "b.npz"), "--model", "ridge"]
        + ["--config", str(bad), "--condition-key", "perturbation"],
    )
    assert failed.exit_code == 1
    assert "alpah" in failed.output and "alpha" in failed.output


def test_fit_reports_bad_condition_column(data_file, tmp_path):
    result = runner.invoke(app, ["fit", str(data_file), "--out", str(tmp_path / "m.npz")])
    assert result.exit_code == 1
    assert "condition" in result.output and "perturbation" in result.output


def test_fit_refuses_to_clobber_checkpoint(data_file, tmp_path):
    checkpoint = tmp_path / "m.npz"
    checkpoint.write_bytes(b"precious")
    result = runner.invoke(
        app,
        ["fit", str(data_file), "--out", str(checkpoint), "--condition-key", "perturbation"],
    )
    assert result.exit_code == 1 and "--overwrite" in result.output
    assert checkpoint.read_bytes() == b"precious"


def test_predict_named_conditions_in_any_order(data_file, tmp_path):
    checkpoint = tmp_path / "m.npz"
    runner.invoke(
        app,
        ["fit", str(data_file), "--out", str(checkpoint), "--condition-key", "perturbation"],
    )
    out = tmp_path / "p.h5ad"
    result = runner.invoke(
        app,
        ["predict", str(checkpoint), "--conditions", "G0009+G0005, G0005", "--out", str(out)]
        + ["--n-cells", "5"],
    )
    assert result.exit_code == 0, result.output
    cells = ad.read_h5ad(out)
    assert list(cells.obs["perturbflow_condition"].unique()) == ["G0005+G0009", "G0005"]
    assert cells.n_obs == 10
    both = runner.invoke(
        app,
        ["predict", str(checkpoint), "--out", str(tmp_path / "q.h5ad"), "--conditions", "A"]
        + ["--split", "s.json"],
    )
    assert both.exit_code == 1 and "exactly one" in both.output


@pytest.mark.parametrize("command", ["demo", "fit", "predict", "evaluate", "guides", "models"])
def test_help_is_complete(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0
    assert "--help" in result.output
    assert "Usage" in result.output


def test_top_level_help_lists_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("demo", "fit", "predict", "evaluate", "guides", "models"):
        assert command in result.output


def test_models_command_lists_registry():
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0
    for name in ("control_mean", "additive", "linear", "ridge", "nearest_neighbor"):
        assert name in result.output


def test_fit_scbig_with_yaml_config_and_checkpoints(data_file, tmp_path):
    import dataclasses

    import yaml

    from perturbflow.models.scbig import ScBIGConfig

    tiny = dict(
        n_programs=4,
        embedding_components=8,
        chunk_size=8,
        token_dim=16,
        n_heads=2,
        n_blocks=1,
        n_modules=2,
        latent_dim=8,
        ae_epochs=1,
        gene_embedding_dim=16,
        condition_dim=16,
        flow_hidden=32,
        flow_steps=6,
        val_every=3,
        ode_steps=3,
    )
    assert set(tiny) <= {f.name for f in dataclasses.fields(ScBIGConfig)}
    config = tmp_path / "scbig.yaml"
    config.write_text(yaml.safe_dump(tiny))
    checkpoint = tmp_path / "scbig.npz"
    result = runner.invoke(
        app,
        ["fit", str(data_file), "--out", str(checkpoint), "--model", "scbig"]
        + ["--config", str(config), "--condition-key", "perturbation", "--no-progress"]
        + ["--checkpoint-dir", str(tmp_path / "ckpt"), "--seed", "2"],
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "ckpt" / "flow" / "last.ckpt").exists()
    from perturbflow.models import load_model

    model = load_model(checkpoint)
    assert model.config.flow_steps == 6 and model.config.seed == 2
    assert model.config.progress is False
    predicted = runner.invoke(
        app,
        [
            "predict",
            str(checkpoint),
            "--conditions",
            "G0005+G0009",
            "--out",
            str(tmp_path / "p.h5ad"),
        ],
    )
    assert predicted.exit_code == 0, predicted.output


def test_fit_backed_reads_the_file_on_disk_and_predicts_as_in_memory(simulated_screen, tmp_path):
    adata = simulated_screen("tiny", library_size=300.0, sparse=True)
    del adata.layers["counts"]
    single = next(c for c in adata.obs["condition"].unique() if c != "ctrl" and "+" not in c)
    path = tmp_path / "sparse.h5ad"
    adata.write_h5ad(path)
    before = path.read_bytes()
    means = {}
    for mode in ("memory", "backed"):
        checkpoint = tmp_path / f"{mode}.npz"
        flags = ["--backed"] if mode == "backed" else []
        fitted = runner.invoke(
            app, ["fit", str(path), "--out", str(checkpoint), "--model", "additive", *flags]
        )
        assert fitted.exit_code == 0, fitted.output
        out = tmp_path / f"{mode}.h5ad"
        predicted = runner.invoke(
            app, ["predict", str(checkpoint), "--conditions", f"{single},ctrl", "--out", str(out)]
        )
        assert predicted.exit_code == 0, predicted.output
        cells = ad.read_h5ad(out)
        means[mode] = cells.to_df().groupby(cells.obs["perturbflow_condition"].to_numpy()).mean()
    pd.testing.assert_frame_equal(means["backed"], means["memory"])
    assert path.read_bytes() == before  # backed mode opens the file read-only


def test_checkpoint_dir_refused_for_one_pass_models(data_file, tmp_path):
    result = runner.invoke(
        app,
        ["fit", str(data_file), "--out", str(tmp_path / "a.npz"), "--model", "additive"]
        + ["--condition-key", "perturbation", "--checkpoint-dir", str(tmp_path / "c")],
    )
    assert result.exit_code == 1 and "checkpoint-dir" in result.output


def test_benchmark_writes_results_summary_splits_and_report(data_file, tmp_path):
    out = tmp_path / "bench"
    args = ["benchmark", str(data_file), "--condition-key", "perturbation", "--out", str(out)]
    args += ["--models", "additive,control_mean", "--seeds", "1,2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    for name in ("results.csv", "summary.csv", "timings.csv", "report.html", "command.txt"):
        assert (out / name).stat().st_size > 0, name
    assert sorted(p.name for p in (out / "splits").iterdir()) == [
        "simulation_seed1.json",
        "simulation_seed2.json",
    ]
    summary = pd.read_csv(out / "summary.csv")
    assert {"win_rate_vs_additive", "fraction_of_ceiling", "n_conditions"} <= set(summary.columns)
    # cell-eval's DE overlap is on in a benchmark, for every model and the ceiling.
    overlap = summary[summary["metric"] == "overlap_at_20"]
    assert set(overlap["model"]) == {"additive", "control_mean", "noise_ceiling"}
    assert overlap["mean"].between(0.0, 1.0).all()
    html = (out / "report.html").read_text()
    from perturbflow.models.peers import gears_available

    gears_line = "installed; not run" if gears_available() else "not installed"
    assert "gears" in html and gears_line in html and "data:image/png;base64," in html
    runs = json.loads((out / "runs.json").read_text())
    assert {label: meta["model"] for label, meta in runs.items()} == {
        "additive": "additive",
        "control_mean": "control_mean",
    }
    crosscheck = pd.read_csv(out / "celleval_crosscheck.csv")  # cell-eval is a test extra
    assert set(crosscheck["model"]) == {"additive", "control_mean"}
    assert crosscheck.groupby("metric")["abs_diff"].max().max() < 1e-4
    assert "largest |ours" in html
    # Rerunning into the same folder needs --resume (nothing recomputed) or --overwrite.
    again = runner.invoke(app, args)
    assert again.exit_code == 1 and "--overwrite" in again.output
    before = pd.read_csv(out / "results.csv")
    fits_before = len(pd.read_csv(out / "timings.csv"))
    resumed = runner.invoke(app, [*args, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    pd.testing.assert_frame_equal(pd.read_csv(out / "results.csv"), before)
    assert len(pd.read_csv(out / "timings.csv")) == fits_before == 4  # nothing refitted


def test_benchmark_rejects_bad_model_config(tmp_path):
    config = tmp_path / "models.yaml"
    config.write_text("scbig:\n  flow_stpes: 3\n")
    result = runner.invoke(
        app,
        ["benchmark", "--out", str(tmp_path / "b"), "--models", "scbig"]
        + ["--model-config", str(config)],
    )
    assert result.exit_code == 1 and "flow_stpes" in result.output


def test_model_options_come_from_yaml_then_the_command_line():
    from perturbflow.cli import _model_runs

    ridge, additive, scbig = _model_runs(
        "ridge,additive,scbig",
        {"ridge": {"alpha": 5.0}, "scbig": {"flow_steps": 7}},
        defaults={"alpha": 1.0, "progress": False},
        overrides={"gene_embedding": "go", "priors": None},
    )
    # YAML beats a default; an override reaches each model's own gene-vector field.
    assert dict(ridge.options) == {"alpha": 5.0, "embedding": "go"}
    assert dict(additive.options) == {}  # no such fields: nothing forced on it
    assert dict(scbig.options) == {"progress": False, "flow_steps": 7, "gene_embedding": "go"}
    assert scbig.config(3).seed == 3 and scbig.config(3).flow_steps == 7


def test_fit_takes_exactly_one_model(data_file, tmp_path):
    result = runner.invoke(
        app,
        ["fit", str(data_file), "--out", str(tmp_path / "a.npz"), "--model", "all"]
        + ["--condition-key", "perturbation"],
    )
    assert result.exit_code == 1 and "one model name" in result.output


def test_unassigned_cells_never_become_a_condition(tmp_path):
    # A CROP-seq-like file: 28 genes of raw counts, a third of the cells without a guide.
    rng = np.random.default_rng(0)
    genes = [f"G{i}" for i in range(28)]
    labels = ["ctrl"] * 60 + ["G1"] * 40 + ["G2"] * 40 + ["G1+G2"] * 40 + ["G3"] * 40
    labels += ["nan"] * 60 + [""] * 20
    counts = rng.poisson(20.0, (len(labels), len(genes))).astype(np.float32)
    for i, label in enumerate(labels):
        for gene in [g for g in label.split("+") if g in genes]:
            counts[i, genes.index(gene)] = rng.poisson(2.0)
    adata = ad.AnnData(
        X=counts,
        obs=pd.DataFrame({"guide": labels}, index=[f"c{i}" for i in range(len(labels))]),
        var=pd.DataFrame(index=genes),
    )
    path = tmp_path / "crop.h5ad"
    adata.write_h5ad(path)
    read_flags = ["--condition-key", "guide", "--unassigned", "blank"]
    fit = runner.invoke(
        app,
        ["fit", str(path), "--out", str(tmp_path / "m.npz"), "--split-kind", "combo", *read_flags],
    )
    assert fit.exit_code == 0, fit.output
    split = json.loads((tmp_path / "m.split.json").read_text())
    assert not any("nan" in c or c == "" for part in ("train", "val", "test") for c in split[part])
    out = tmp_path / "bench"
    bench = runner.invoke(
        app,
        ["benchmark", str(path), "--split", "combo", "--seeds", "1"]
        + ["--models", "additive", "--out", str(out), *read_flags],
    )
    assert bench.exit_code == 0, bench.output
    results = pd.read_csv(out / "results.csv")
    assert not results["condition"].astype(str).str.contains("nan").any()
    from perturbflow.data.download import file_sha256

    assert f"sha256 {file_sha256(path)}" in (out / "report.html").read_text()
    refused = runner.invoke(
        app,
        ["fit", str(path), "--out", str(tmp_path / "x.npz"), "--keep-unassigned", *read_flags],
    )
    assert refused.exit_code == 1 and "no perturbation" in refused.output


def test_a_benchmark_that_fails_after_loading_can_be_rerun(data_file, tmp_path):
    out = tmp_path / "bench"
    common = [str(data_file), "--condition-key", "perturbation", "--out", str(out)]
    typo = runner.invoke(app, ["benchmark", *common, "--models", "additive", "--split", "combi"])
    assert typo.exit_code == 1 and "combi" in typo.output
    fixed = runner.invoke(
        app,
        ["benchmark", *common, "--models", "additive", "--split", "combo", "--seeds", "1"]
        + ["--no-report"],
    )
    assert fixed.exit_code == 0, fixed.output
    assert not (out / ".perturbflow-incomplete").exists()
    # --no-report: every table, no report.html.
    for name in ("results.csv", "summary.csv", "timings.csv", "command.txt"):
        assert (out / name).stat().st_size > 0, name
    assert not (out / "report.html").exists() and "no report.html" in fixed.output


def test_errors_name_flags_and_are_not_quoted(data_file, tmp_path):
    # The file's conditions are in obs["perturbation"]: the default column does not exist.
    wrong_column = runner.invoke(app, ["fit", str(data_file), "--out", str(tmp_path / "m.npz")])
    assert wrong_column.exit_code == 1
    assert "--condition-key" in wrong_column.output and "condition_key=" not in wrong_column.output
    unknown = runner.invoke(app, ["benchmark", "--models", "nope", "--out", str(tmp_path / "b")])
    assert unknown.exit_code == 1
    assert "error: unknown model(s) ['nope']" in unknown.output  # no stray quotes around it
    missing = runner.invoke(app, ["benchmark", "no_such_data", "--out", str(tmp_path / "c")])
    assert missing.exit_code == 1 and "neither a file nor a registered dataset" in missing.output


def test_predict_strict_refuses_unknown_genes_and_matches_letter_case(data_file, tmp_path):
    checkpoint = tmp_path / "m.npz"
    fitted = runner.invoke(
        app,
        ["fit", str(data_file), "--out", str(checkpoint), "--condition-key", "perturbation"],
    )
    assert fitted.exit_code == 0, fitted.output
    split = json.loads(checkpoint.with_suffix(".split.json").read_text())
    gene = next(c for c in split["train"] if "+" not in c and c != "ctrl")
    out = tmp_path / "p.h5ad"
    strict = ["predict", str(checkpoint), "--out", str(out), "--strict"]
    refused = runner.invoke(app, [*strict, "--conditions", f"NOTAGENE,{gene}"])
    assert refused.exit_code == 1 and "NOTAGENE" in refused.output and not out.exists()
    lower = runner.invoke(app, [*strict, "--conditions", gene.lower()])
    assert lower.exit_code == 0, lower.output
    assert set(ad.read_h5ad(out).obs["perturbflow_condition"].astype(str)) == {gene}
    lenient = runner.invoke(
        app,
        ["predict", str(checkpoint), "--out", str(out), "--overwrite", "--conditions", "NOTAGENE"],
    )
    assert lenient.exit_code == 0, lenient.output


def test_benchmark_with_context_key_matches_controls_and_holds_out_a_context(
    tmp_path, simulated_screen
):
    path = tmp_path / "two_contexts.h5ad"
    simulated_screen("tiny", n_contexts=2, control_context_fractions=(0.8, 0.2)).write_h5ad(path)
    out = tmp_path / "bench"
    args = ["benchmark", str(path), "--split", "cross_context", "--context-key", "context"]
    result = runner.invoke(app, [*args, "--models", "additive", "--seeds", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    results = pd.read_csv(out / "results.csv")
    assert set(results["subgroup"]) == {"cross_context_ctx0"}
    missing = runner.invoke(app, [*args[:4], "--context-key", "stim", "--out", str(tmp_path / "x")])
    assert missing.exit_code == 1 and "obs has no context column 'stim'" in missing.output


def test_terminal_table_abbreviates_metrics_with_a_legend_and_wraps_names():
    from rich.console import Console

    from perturbflow.cli import summary_table

    rows = [
        {"subgroup": "combo_seen2", "model": "calibrated_additive", "metric": m, "value": 0.5}
        for m in ("pearson_delta_de20", "mse_de20", "discrimination_l1", "energy_distance")
    ]
    frame = pd.DataFrame(rows).assign(condition="A+B")
    console = Console(width=80, record=True)
    console.print(summary_table(frame, "t"))
    text = console.export_text()
    assert "rΔ de20 ↑" in text and "…" not in text  # nothing cut off at 80 columns
    assert "rΔ de20 = pearson_delta_de20" in text.replace("\n", " ")
    assert max(len(line) for line in text.splitlines()) <= 80
