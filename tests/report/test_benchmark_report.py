"""The benchmark report on real Norman data: GI comparison with the published fits."""

from __future__ import annotations

import pytest

from perturbflow.data.datasets import data_dir, load_dataset
from perturbflow.eval.loop import model_runs, run
from perturbflow.report.benchmark_report import build_report

needs_data = pytest.mark.skipif(
    data_dir() is None or not (data_dir() / "perturbench_devel" / "devel.h5ad").exists(),
    reason="real data folder absent (set PERTURBFLOW_DATA_DIR)",
)


@needs_data
def test_norman_report_compares_gi_with_published_fits(tmp_path):
    dataset = load_dataset("norman19_subset")
    result = run(dataset, "combo", model_runs("additive,control_mean"), [1], out=tmp_path)
    path = build_report(tmp_path, dataset, result, title="norman", command="test")
    html = path.read_text()
    assert "published Norman 2019 fits, 5 shared double(s)" in html
    assert "Genetic interactions of held-out doubles" in html
    assert dataset.adata.uns["perturbflow"]["dataset"]["sha256"] in html


@pytest.mark.parametrize(
    ("installed", "ran", "expected"),
    [
        (
            False,
            False,
            "not installed (pip install 'perturbflow[peers]' (in-process) or "
            "`perturbflow peers install gears`)",
        ),
        (True, False, "installed; not run (add it to --models, e.g. --models all,gears)"),
        (True, True, "ran in this benchmark"),
    ],
)
def test_peers_status_says_whether_gears_ran(tmp_path, monkeypatch, installed, ran, expected):
    from perturbflow.report.benchmark_report import peers_status

    monkeypatch.setattr("perturbflow.models.peers._gears.gears_available", lambda: installed)
    runs = {"additive": {"model": "additive", "peer": False, "programs": False}}
    if ran:  # the metadata says a peer ran, under any label
        runs["gears_run"] = {"model": "gears", "peer": True, "programs": False}
    assert peers_status(runs, tmp_path)["gears"].startswith(expected)


def test_figures_show_the_program_run_and_the_reference(tmp_path):
    from perturbflow.report.benchmark_report import shown_runs

    (tmp_path / "predictions").mkdir()
    for label in ("core", "additive", "ridge"):
        (tmp_path / "predictions" / f"{label}_seed1.csv").write_text("x\n")
    runs = {
        "ridge": {"programs": False},
        "additive": {"programs": False},
        "core": {"programs": True},
    }
    assert shown_runs(runs, tmp_path, 1) == ["core", "additive"]
    runs["core"]["programs"] = False
    assert shown_runs(runs, tmp_path, 1) == ["additive"]
    assert shown_runs({"ridge": {}, "x": {}}, tmp_path, 1) == ["ridge"]
