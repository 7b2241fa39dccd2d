"""How far a mean-shift model can go: control cells moved onto each held-out condition's real mean.

``oracle_mean_shift`` is given the answer (the real mean of every test condition) and predicts its
cells the way every mean-shift baseline does: stored control cells, moved as a group onto that
mean. Its energy distance is therefore the least any model reaches whose cells are shifted control
cells, whatever its means; the rest of the gap to the noise ceiling is the shape of the
distribution. It is registered here only, never in the package: it reads test cells.

Writes ``results.csv`` (long, as ``benchmarks/ablation.py``) and ``table.md``: per screen, split and
subgroup the mean over seeds of the per-seed subgroup means of ``energy_distance`` and
``mse_de20`` for the oracle, ``additive`` and the noise ceiling, and the oracle's ratio to
``additive``.

Run: ``.venv/bin/python benchmarks/oracle_shift.py --out runs/oracle_shift --seeds 1,2,3,4,5 \
--screens runs/screens/grnsim_dorothea_s2.h5ad --splits combo``
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from perturbflow.data.outputs import mark_complete, prepare_output_dir, write_csv
from perturbflow.eval.loop import RunSpec, run
from perturbflow.models.base import register_model
from perturbflow.models.baselines.mean_shift import MeanShiftModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ablation import load_screen  # noqa: E402  (the same screens, read the same way)

logger = logging.getLogger("oracle_shift")

ORACLE = "oracle_mean_shift"
METRICS = ("energy_distance", "mse_de20")


class OracleMeanShift(MeanShiftModel):
    """The real mean change of every non-training condition; shifted control cells as cells.

    Registered by :func:`main` only, so importing this script adds no model that reads test
    cells to a process's registry (``--models all`` would pick it up).
    """

    name = ORACLE

    def _fit(self, dataset, train) -> None:
        others = [name for name in dataset.conditions if name not in set(train)]
        self.real_deltas_ = dataset.mean_expression(others) - self.control_mean_

    def _delta(self, condition: frozenset[str], name: str) -> np.ndarray:
        return self.real_deltas_.loc[name].to_numpy()


def table(results: pd.DataFrame) -> str:
    """Mean over seeds of per-seed subgroup means; the oracle's ratio to additive."""
    seeds = results.groupby(["screen", "split", "subgroup", "metric", "model", "seed"])[
        "value"
    ].mean()
    means = seeds.groupby(["screen", "split", "subgroup", "metric", "model"]).mean().unstack()
    lines = [
        "| screen | split | subgroup | metric | additive | oracle_mean_shift | oracle / additive "
        "| noise_ceiling |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (screen, split, subgroup, metric), row in means.iterrows():
        if metric not in METRICS:
            continue
        lines.append(
            f"| {screen} | {split} | {subgroup} | {metric} | {row['additive']:.3f} | "
            f"{row[ORACLE]:.3f} | {row[ORACLE] / row['additive']:.2f} | "
            f"{row.get('noise_ceiling', np.nan):.3f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/oracle_shift"))
    parser.add_argument("--screens", required=True, help="comma-separated names or paths")
    parser.add_argument("--splits", default="combo", help="comma-separated split kinds")
    parser.add_argument("--seeds", default="1,2,3,4,5", help="comma-separated split seeds")
    parser.add_argument("--n-cells", type=int, default=100, help="predicted cells per condition")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()
    register_model(ORACLE)(OracleMeanShift)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    folder = prepare_output_dir(args.out, overwrite=args.overwrite)
    (folder / "command.txt").write_text(
        " ".join([".venv/bin/python benchmarks/oracle_shift.py", *sys.argv[1:]]) + "\n"
    )
    frames = []
    runs = [RunSpec("additive", "additive"), RunSpec(ORACLE, ORACLE)]
    seeds = [int(s) for s in args.seeds.split(",")]
    for screen in [s.strip() for s in args.screens.split(",") if s.strip()]:
        dataset = load_screen(screen, 0)
        label = Path(screen).stem if screen.endswith(".h5ad") else screen
        for kind in [k.strip() for k in args.splits.split(",") if k.strip()]:
            logger.info("%s %s seeds %s", label, kind, seeds)
            result = run(dataset, kind, runs, seeds, n_cells=args.n_cells)
            frames.append(result.results.assign(screen=label, split=kind))
    results = pd.concat(frames, ignore_index=True)
    write_csv(results, folder / "results.csv", overwrite=True)
    (folder / "table.md").write_text(table(results))
    mark_complete(folder)
    logger.info("wrote %s", folder)


if __name__ == "__main__":
    main()
