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
