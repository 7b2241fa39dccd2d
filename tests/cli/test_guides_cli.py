"""``perturbflow guides``: each guide's knockdown of its target, written as a CSV."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from perturbflow.cli import app

runner = CliRunner()


@pytest.fixture
def screen_file(tmp_path):
    """Gene A at 8 in control cells (normalised, before log1p), at 2 under guide A_1 (knockdown
    0.75) and at 8 under A_2 (none); two background genes."""
    levels = {"NTC": 8.0, "A_1": 2.0, "A_2": 8.0}
    spread = np.tile([1.1, 0.9], 5)  # (10,), mean exactly 1
    rng = np.random.default_rng(0)
    target = np.concatenate([level * spread for level in levels.values()])  # (30,)
    x = np.column_stack([target, rng.uniform(1.0, 5.0, (30, 2))])  # (30, 3)
    obs = pd.DataFrame(
        {"gene": ["ctrl"] * 10 + ["A"] * 20, "guide": np.repeat(list(levels), 10)},
        index=[f"c{i}" for i in range(30)],
    )
    adata = ad.AnnData(
        X=np.log1p(x).astype(np.float32), obs=obs, var=pd.DataFrame(index=["A", "G0", "G1"])
    )
    path = tmp_path / "screen.h5ad"
    adata.write_h5ad(path)
    return path


def test_guides_writes_the_efficiency_table_and_refuses_to_overwrite(screen_file, tmp_path):
    out = tmp_path / "efficiency.csv"
    args = ["guides", str(screen_file), "--condition-key", "gene", "--guide-key", "guide"]
    args += ["--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "1 of 2 guides efficient" in result.output
    table = pd.read_csv(out).set_index("guide")
    np.testing.assert_allclose(table.loc[["A_1", "A_2"], "knockdown"], [0.75, 0.0], atol=1e-5)
    assert table["efficient"].tolist() == [True, False]

    again = runner.invoke(app, args)
    assert again.exit_code == 1 and "exists" in again.output and "--overwrite" in again.output
    strict = runner.invoke(app, [*args, "--min-knockdown", "0.9", "--overwrite"])
    assert strict.exit_code == 0, strict.output
    assert not pd.read_csv(out)["efficient"].any()


def test_guides_reads_a_guide_map_and_names_a_missing_one(screen_file, tmp_path):
    guide_map = tmp_path / "map.csv"
    guide_map.write_text("guide,gene\nA_1,A\nA_2,A\n")
    args = ["guides", str(screen_file), "--condition-key", "gene", "--guide-key", "guide"]
    result = runner.invoke(
        app, [*args, "--guide-map", str(guide_map), "--out", str(tmp_path / "a.csv")]
    )
    assert result.exit_code == 0, result.output
    missing = runner.invoke(
        app, [*args, "--guide-map", str(tmp_path / "none.csv"), "--out", str(tmp_path / "b.csv")]
    )
    assert missing.exit_code == 1 and "none.csv not found" in missing.output
    assert not (tmp_path / "b.csv").exists()
