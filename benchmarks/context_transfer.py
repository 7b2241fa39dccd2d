"""Cross-context prediction: does calibrating to the target context help, and by how much?

``calibrated_additive`` on a context split predicts ``a · transferred + b · m_T`` (see
``perturbflow.models.baselines.context``). This script measures that default against the same
model without it (``context=False``), the plain additive transfer and the linear/ridge baselines,
paired over (screen, split seed):

- simulated screens with three contexts whose baselines and responses differ
  (``simulate(n_contexts=3, context_response=…)``), ``cross_context`` split;
- ``mcfaline23_subset`` (three glioblastoma lines), ``cross_cell_line`` split.

Writes ``results.csv``, ``table.md`` and ``command.txt`` into ``--out``.

Run: ``.venv/bin/python benchmarks/context_transfer.py --out runs/context_transfer``
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from perturbflow.data import read
from perturbflow.data.datasets import load_dataset
from perturbflow.data.outputs import mark_complete, prepare_output_dir
from perturbflow.data.synthetic import simulate
from perturbflow.eval.loop import RunSpec, model_runs, run

logger = logging.getLogger("context_transfer")

SCREEN = dict(
    n_genes=200,
    n_perturbed=24,
    n_doubles=0,
    n_unmeasured=0,
    n_control_cells=600,
    n_cells_per_condition=90,
    n_contexts=3,
    context_effect=0.8,
)
METRICS = ("pearson_delta_de20", "mse_de20", "discrimination_l1")
REFERENCE = "calibrated_additive"


def runs(models: str) -> list[RunSpec]:
    """The compared models, plus the reference without its context calibration."""
    return [
        *model_runs(models),
        RunSpec("calibrated_no_context", REFERENCE, {"context": False}),
        RunSpec("calibrated_all_genes", REFERENCE, {"context_genes": 0}),
    ]


def benchmark(dataset, split_kind: str, label: str, args) -> pd.DataFrame:
    with tempfile.TemporaryDirectory() as folder:
        result = run(dataset, split_kind, runs(args.models), args.seeds, out=Path(folder))
    results = result.results.assign(dataset=label)
    return results[results["metric"].isin(METRICS) & ~results["subgroup"].str.startswith("val")]


def table(results: pd.DataFrame) -> str:
    """Per dataset: mean over (screen, seed) of each model; paired Δ vs the reference."""
    per_seed = (
        results.groupby(["dataset", "seed", "model", "metric"])["value"].mean().unstack("model")
    )
    rng = np.random.default_rng(0)
    lines = []
    for dataset, block in per_seed.groupby(level="dataset"):
        lines += [
            f"**{dataset}** ({len(block.index.get_level_values('seed').unique())} split seeds "
            "× screens; Δ = model − calibrated_additive per seed, mean [95 % bootstrap CI])",
            "",
            "| metric | model | mean | Δ vs calibrated_additive | better in |",
            "|---|---|---|---|---|",
        ]
        for metric, rows in block.groupby(level="metric"):
            lower_better = metric.startswith("mse")
            for model in rows.columns:
                values = rows[model].dropna()
                if values.empty:
                    continue
                diff = (rows[model] - rows[REFERENCE]).dropna().to_numpy()
                boots = rng.choice(diff, (2000, len(diff))).mean(axis=1)
                low, high = np.percentile(boots, [2.5, 97.5])
                wins = (diff < 0).sum() if lower_better else (diff > 0).sum()
                cell = (
                    "—" if model == REFERENCE else f"{diff.mean():+.3f} [{low:+.3f}, {high:+.3f}]"
                )
                better = "—" if model == REFERENCE else f"{int(wins)}/{len(diff)}"
                lines.append(f"| {metric} | {model} | {values.mean():.3f} | {cell} | {better} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/context_transfer"))
    parser.add_argument("--screens", default="21,22,23", help="simulator seeds")
    parser.add_argument("--seeds", default="1,2,3,4,5,6", help="split seeds")
    parser.add_argument("--context-response", type=float, default=0.5)
    parser.add_argument("--models", default="additive,calibrated_additive,linear,ridge")
    parser.add_argument("--no-real", action="store_true", help="skip mcfaline23_subset")
    parser.add_argument("--no-sim", action="store_true", help="skip the simulated screens")
    parser.add_argument(
        "--screen", type=Path, action="append", default=[], help="a .h5ad with obs['cell_type']"
    )
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",")]
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    folder = prepare_output_dir(args.out, overwrite=args.overwrite)
    (folder / "command.txt").write_text(
        ".venv/bin/python benchmarks/context_transfer.py " + " ".join(sys.argv[1:]) + "\n"
    )
    frames = []
    for path in args.screen:
        dataset = read(path, context_key="cell_type")
        frames.append(benchmark(dataset, "cross_context", path.stem, args))
    for screen in (int(s) for s in args.screens.split(",")) if not args.no_sim else ():
        adata = simulate(**SCREEN, context_response=args.context_response, seed=screen)
        dataset = read(adata, context_key="context")
        frames.append(
            benchmark(dataset, "cross_context", "simulated three-context screens", args).assign(
                seed=lambda f, s=screen: f["seed"] + 100 * s
            )  # (screen, seed) pairs
        )
    if not args.no_real:
        frames.append(
            benchmark(
                load_dataset("mcfaline23_subset"), "cross_cell_line", "mcfaline23_subset", args
            )
        )
    results = pd.concat(frames, ignore_index=True)
    results.to_csv(folder / "results.csv", index=False)
    (folder / "table.md").write_text(table(results))
    mark_complete(folder)
    logger.info("wrote %s", folder / "table.md")


if __name__ == "__main__":
    main()
