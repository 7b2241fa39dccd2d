"""The benchmark report on real Norman data: GI comparison with the published fits."""

from __future__ import annotations

import pytest

from perturbflow.data.datasets import data_dir, load_dataset
from perturbflow.eval.multiseed import run_benchmark
from perturbflow.report.benchmark_report import build_report

needs_data = pytest.mark.skipif(
    data_dir() is None or not (data_dir() / "perturbench_devel" / "devel.h5ad").exists(),
    reason="real data folder absent (set PERTURBFLOW_DATA_DIR)",
)


@needs_data
def test_norman_report_compares_gi_with_published_fits(tmp_path):
    dataset = load_dataset("norman19_subset")
    result = run_benchmark(
        dataset, tmp_path, split_kind="combo", seeds=[1], models="additive,control_mean"
    )
    path = build_report(tmp_path, dataset, result, title="norman", command="test")
    html = path.read_text()
    assert "published Norman 2019 fits, 5 shared double(s)" in html
    assert "Genetic interactions of held-out doubles" in html
    assert dataset.adata.uns["perturbflow"]["dataset"]["sha256"] in html


@pytest.mark.parametrize(
    ("installed", "ran", "expected"),
    [
        (False, False, "not installed (pip install 'perturbflow[peers]')"),
        (True, False, "installed; not run (add gears to --models"),
        (True, True, "ran in this benchmark"),
    ],
)
def test_peers_status_says_whether_gears_ran(tmp_path, monkeypatch, installed, ran, expected):
    from perturbflow.report.benchmark_report import peers_status

    monkeypatch.setattr("perturbflow.models.peers.gears_available", lambda: installed)
    (tmp_path / "predictions").mkdir()
    if ran:
        (tmp_path / "predictions" / "gears_seed1.csv").write_text("x\n")
    assert peers_status(tmp_path)["GEARS"].startswith(expected)
