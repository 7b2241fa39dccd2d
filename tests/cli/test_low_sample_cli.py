"""``perturbflow benchmark --train-cells``: levels parse, bad levels are refused by name."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from perturbflow.cli import _train_cells, app

runner = CliRunner()


def test_levels_parse():
    assert _train_cells("10,25,all") == (10, 25, None)
    assert _train_cells(None) is None


@pytest.mark.parametrize(
    ("value", "message"),
    [("0", "must be at least 1"), ("abc", "positive integer or 'all', got 'abc'")],
)
def test_bad_levels_are_refused_before_anything_runs(tmp_path, value, message):
    out = tmp_path / "run"
    result = runner.invoke(
        app, ["benchmark", "--out", str(out), "--models", "additive", "--train-cells", value]
    )
    assert result.exit_code == 1
    assert f"--train-cells '{value}'" in result.output and message in result.output
    assert not out.exists()
