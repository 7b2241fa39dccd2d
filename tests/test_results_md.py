"""benchmarks/results_md.py: RESULTS.md is stitched from run folders, never edited by hand."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pandas as pd

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "results_md.py"


def _load():
    spec = importlib.util.spec_from_file_location("results_md", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_folder(root: Path, name: str, scbig_seconds: list[float]) -> Path:
    folder = root / name
    folder.mkdir()
    (folder / "command.txt").write_text(
        f".venv/bin/python benchmarks/ablation.py --out runs/{name}\n"
    )
    (folder / "table.md").write_text(f"| table of {name} |\n")
    rows = [{"model": "additive", "seed": s, "fit_s": 0.3} for s in (1, 2, 3)]
    rows += [
        {"model": "scbig", "seed": s, "fit_s": t}
        for s, t in zip((1, 2, 3), scbig_seconds, strict=True)
    ]
    pd.DataFrame(rows).to_csv(folder / "timings.csv", index=False)
    return folder


def test_sections_carry_command_table_and_median_slow_fit(tmp_path):
    module = _load()
    text = module.section(_run_folder(tmp_path, "grn_a", [150.0, 170.0, 160.0]))
    assert "## `grn_a`" in text
    assert ".venv/bin/python benchmarks/ablation.py --out runs/grn_a" in text
    median = next(line for line in text.splitlines() if line.startswith("Median fit"))
    assert median == "Median fit seconds: scbig 160."  # baselines (0.3 s) are left out
    assert "| table of grn_a |" in text


def test_cli_writes_every_run_in_order(tmp_path):
    first = _run_folder(tmp_path, "first", [10.0, 10.0, 10.0])
    second = _run_folder(tmp_path, "second", [20.0, 20.0, 20.0])
    out = tmp_path / "RESULTS.md"
    subprocess.run(
        [sys.executable, str(SCRIPT), str(first), str(second), "--out", str(out)], check=True
    )
    text = out.read_text()
    assert text.startswith("# Measured results")
    assert text.index("## `first`") < text.index("## `second`")
