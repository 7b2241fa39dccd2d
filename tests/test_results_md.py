"""benchmarks/results_md.py: RESULTS.md is stitched from run folders, never edited by hand."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
from _scripts import BENCHMARKS, load_script

SCRIPT = BENCHMARKS / "results_md.py"


def _load():
    return load_script("results_md")


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


def test_a_benchmark_folder_is_tabled_from_its_results(tmp_path):
    module = _load()
    folder = tmp_path / "bench"
    folder.mkdir()
    (folder / "command.txt").write_text("perturbflow benchmark --out runs/bench\n")
    rows = [
        ("A", "combo_seen2", metric, value + seed, model, seed)
        for metric in ("pearson_delta", "pearson_delta_de20", "mse_de20")
        for model, value in (("additive", 0.5), ("ridge", 0.25))
        for seed in (1, 2)
    ]
    pd.DataFrame(
        rows, columns=["condition", "subgroup", "metric", "value", "model", "seed"]
    ).to_csv(folder / "results.csv", index=False)
    text = module.section(folder, "A title")
    assert text.startswith("## A title (`bench`)")
    assert "Seeds: 1, 2." in text
    # mean over the two seeds' values (1.5, 2.5) and their sd
    assert "| combo_seen2 | additive | 2.000 ± 0.707 | 2.000 ± 0.707 | 2.000 ± 0.707 |" in text
    assert "| combo_seen2 | ridge | 1.750 ± 0.707 |" in text


def test_a_folder_without_its_command_is_refused(tmp_path):
    folder = tmp_path / "nocommand"
    folder.mkdir()
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(folder), "--out", str(tmp_path / "R.md")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "without command.txt" in done.stderr
    assert not (tmp_path / "R.md").exists()


def test_a_low_sample_run_is_tabled_per_level_with_the_discrimination_line(tmp_path):
    module = _load()
    folder = tmp_path / "low_sample"
    folder.mkdir()
    (folder / "command.txt").write_text("perturbflow benchmark --train-cells 10,all\n")
    rows = [
        ("A+B", subgroup, "discrimination_l1", value + 0.1 * (level == "all"), model, seed, level)
        for subgroup in ("combo_seen2", "unseen_single")
        for model, value in (("scbig", 0.7), ("additive", 0.6))
        for seed in (1, 2)
        for level in ("10", "all")
    ]
    columns = ["condition", "subgroup", "metric", "value", "model", "seed", "train_cells"]
    pd.DataFrame(rows, columns=columns).to_csv(folder / "results.csv", index=False)
    text = module.section(folder)
    assert "| metric | model | 10 cells | all cells |" in text
    assert "| discrimination_l1 | scbig | 0.700 ± 0.000 | 0.800 ± 0.000 |" in text
    assert "`combo_seen2`" in text and "unseen_single" not in text
    assert "at 10 training cells per condition: scbig 0.700 ± 0.000, additive 0.600" in text


def test_a_run_whose_every_fit_failed_is_tabled_with_its_failures(tmp_path):
    import json

    module = _load()
    folder = tmp_path / "peer"
    folder.mkdir()
    (folder / "command.txt").write_text("perturbflow benchmark --models gears\n")
    pd.DataFrame(columns=["model", "seed", "fit_s", "predict_s"]).to_csv(
        folder / "timings.csv", index=False
    )
    rows = [("A", "combo_seen2", "pearson_delta", 0.9, "noise_ceiling", 1)]
    pd.DataFrame(
        rows, columns=["condition", "subgroup", "metric", "value", "model", "seed"]
    ).to_csv(folder / "results.csv", index=False)
    failed = {"1": "UnknownPerturbationError: NFKB", "2": "UnknownPerturbationError: REL"}
    (folder / "runs.json").write_text(json.dumps({"gears": {"model": "gears", "failed": failed}}))
    text = module.section(folder)
    assert "gears failed in seed 1 (left out): UnknownPerturbationError: NFKB" in text
    assert "gears failed in seed 2 (left out): UnknownPerturbationError: REL" in text
    assert "Median fit" not in text  # no fit finished
