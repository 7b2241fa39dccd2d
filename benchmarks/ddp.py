"""Does scbig trained with DDP (2 CPU processes, gloo) agree with single-process training?

One small simulated screen (``perturbflow.data.synthetic.simulate``, 200 genes, 24 singles and 40
doubles) and one simulation split; scbig is fitted with a fixed budget (MLP autoencoder, 2 epochs;
300 flow steps, validation every 50, no early stopping, ``mean_weight=1`` and ``shape_weight=1``
so the flow's whole change reaches the predictions) in these runs, each a fresh worker process:

- ``single`` seeds 0, 1, 2: ``devices=1``; seeds 1 and 2 give the *natural tolerance*, how far two
  equally good single-process fits lie apart;
- ``ddp`` seed 0: ``strategy="ddp"``, ``devices=2``, ``accelerator="cpu"`` (gloo). Launched two
  ways (``--launchers``): ``lightning`` (the worker starts as one process; Lightning reruns its
  command line once for rank 1) and ``torchrun`` (``torch.distributed.run --nproc_per_node 2``
  starts both ranks). ``ddp_spawn`` is not used: it trains in spawned processes and hands back
  only the weights, not the best-validation state scbig keeps, nor the model built around them.

Under DDP every rank draws its own batch from ``(seed, step, rank)`` and gradients are averaged,
so ``flow_conditions_per_batch`` is per rank: the DDP runs draw half the single runs' conditions
per rank (4 of 8), and a DDP step averages as many conditions as a single-process step (with the
whole 8 on each rank it averaged twice as many, and reached a lower validation loss than any
single run for that reason alone). The autoencoder's batches do not depend on the rank: both ranks
train it on single seed 0's. The ranks' draws differ from single seed 0's, so the fits are not
bit-identical; **tolerance**: each disagreement between DDP and single seed 0 (``1 − r`` and max |diff| of the predicted mean deltas of the test conditions,
|diff| of the final validation loss, mean |diff| of the validation curve) must be at most the
largest disagreement between single seed 0 and single seeds 1, 2.

Only rank 0 writes (the worker's result files, the model checkpoint); the fitted model on rank 0
is saved and reloaded, and its reloaded predictions must equal those of the model in memory.

Writes ``ddp.json`` (settings, per-run times, agreement metrics, tolerance, pass/fail),
``curves.csv`` (run, stage, kind, step, loss), ``agreement.csv``, ``deltas_<run>.csv``,
``table.md`` and ``command.txt``; ``fits/`` holds each run's worker output and checkpoint.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ddp.py --out runs/ddp``
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

logger = logging.getLogger("ddp")

SCBIG_OPTIONS = {
    "autoencoder": "mlp",
    "ae_epochs": 2,
    "flow_steps": 300,
    "val_every": 50,
    "patience": 1000,  # no early stopping: every run trains the same number of steps
    "mean_weight": 1.0,
    "shape_weight": 1.0,
    "flow_conditions_per_batch": 8,  # a step's conditions: per process, so DDP ranks draw 8 / 2
    "accelerator": "cpu",
}
DDP_DEVICES = 2
SCREEN = {"n_genes": 200, "n_control_cells": 1000, "n_cells_per_condition": 100, "seed": 0}
PREDICT_CELLS = 500
SPLIT_SEED = 0


class _CurveHandler(logging.Handler):
    """Collects the DEBUG loss records of :mod:`perturbflow.train.plan` as rows."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.rows: list[dict] = []
        self._stage = 0
        self._last_step = -1

    def emit(self, record: logging.LogRecord) -> None:
        kind, step, loss = record.args
        if kind == "train" and step < self._last_step:
            self._stage += 1  # a new trainer started at step 0
        if kind == "train":
            self._last_step = step
        self.rows.append({"stage": self._stage, "kind": kind, "step": step, "loss": loss})


def run_options(kind: str) -> dict:
    """scbig's options for a ``single`` or ``ddp`` run: the same global batch of conditions."""
    if kind == "single":
        return {**SCBIG_OPTIONS, "devices": 1, "strategy": "auto"}
    per_rank = SCBIG_OPTIONS["flow_conditions_per_batch"] // DDP_DEVICES
    return {
        **SCBIG_OPTIONS,
        "flow_conditions_per_batch": per_rank,
        "devices": DDP_DEVICES,
        "strategy": "ddp",
    }


def _worker(args: argparse.Namespace) -> None:
    """Fit scbig once; rank 0 writes ``result.json``, ``deltas.csv``, ``curves.csv``, model."""
    import torch

    from perturbflow.data import read
    from perturbflow.data.splits import make_split
    from perturbflow.eval.loop import RunSpec, fit_model
    from perturbflow.models.scbig import ScBIG
    from perturbflow.train import is_global_zero

    torch.set_num_threads(1)
    handler = _CurveHandler()
    plan_logger = logging.getLogger("perturbflow.train.plan")
    plan_logger.setLevel(logging.DEBUG)
    plan_logger.addHandler(handler)

    dataset = read(args.screen)
    split = make_split("simulation", dataset.conditions, seed=SPLIT_SEED)
    spec = RunSpec("scbig", "scbig", run_options(args.worker))
    start = time.perf_counter()
    model = fit_model(spec, dataset, split, args.seed)  # the package's one fit call site
    fit_s = time.perf_counter() - start
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    if not is_global_zero():
        return  # rank 1 holds the same model; it writes nothing
    test = [name for name in split.test if name in set(dataset.conditions)]
    start = time.perf_counter()
    deltas = model.predict_delta(test, n_cells=PREDICT_CELLS, seed=0)  # (C, G)
    predict_s = time.perf_counter() - start
    folder = args.result
    folder.mkdir(parents=True, exist_ok=True)
    path = model.save(folder / "model.npz", overwrite=True)
    reloaded = ScBIG.load(path).predict_delta(test, n_cells=PREDICT_CELLS, seed=0)
    deltas.to_csv(folder / "deltas.csv")
    pd.DataFrame(handler.rows).to_csv(folder / "curves.csv", index=False)
    result = {
        "world_size": world,
        "fit_s": fit_s,
        "predict_s": predict_s,
        "history": {k: float(v) for k, v in model.history_.items()},
        "reload_identical": bool(np.array_equal(deltas.to_numpy(), reloaded.to_numpy())),
    }
    (folder / "result.json").write_text(json.dumps(result, indent=2))


def _launch(run: str, seed: int, launcher: str, screen: Path, result: Path) -> float:
    """Run one worker (two processes for DDP); return its wall time in seconds."""
    worker = [str(Path(__file__).resolve()), "--worker", run, "--seed", str(seed)]
    worker += ["--screen", str(screen), "--result", str(result)]
    if launcher == "torchrun":
        command = [sys.executable, "-m", "torch.distributed.run"]
        command += ["--nproc_per_node", str(DDP_DEVICES)]
        command += ["--master_port", "29517", *worker]
    else:
        command = [sys.executable, *worker]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    result.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(result.with_suffix(".log"), "w") as log:
        subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    return time.perf_counter() - start


def _truth(screen: Path, conditions: list[str]) -> pd.DataFrame:
    from perturbflow.data import read
    from perturbflow.data.conditions import CONTROL_NAME

    dataset = read(screen)
    control = dataset.expression(CONTROL_NAME).mean(axis=0)
    rows = [dataset.expression(name).mean(axis=0) - control for name in conditions]
    return pd.DataFrame(np.vstack(rows), index=conditions, columns=dataset.genes)


def _flow_val_curve(curves: pd.DataFrame) -> np.ndarray:
    """Validation losses of the last stage trained (the flow), in step order."""
    val = curves[curves["kind"] == "val"]
    return val[val["stage"] == val["stage"].max()]["loss"].to_numpy()


def _compare(a: dict, b: dict) -> dict:
    """Disagreement of two runs: predicted deltas, final validation loss, validation curve."""
    delta_a, delta_b = a["deltas"].to_numpy(), b["deltas"].to_numpy()  # (C, G)
    curve_a, curve_b = (_flow_val_curve(run["curves"]) for run in (a, b))
    n = min(len(curve_a), len(curve_b))
    return {
        "one_minus_r_delta": 1.0 - float(np.corrcoef(delta_a.ravel(), delta_b.ravel())[0, 1]),
        "max_abs_mean_diff": float(np.abs(delta_a - delta_b).max()),
        "rms_mean_diff": float(np.sqrt(np.mean((delta_a - delta_b) ** 2))),
        "final_val_abs_diff": abs(
            a["result"]["history"]["flow_best_val"] - b["result"]["history"]["flow_best_val"]
        ),
        "val_curve_mean_abs_diff": float(np.abs(curve_a[:n] - curve_b[:n]).mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/ddp"))
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--launchers", default="lightning,torchrun")
    parser.add_argument("--worker", choices=("single", "ddp"), help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--screen", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return

    from perturbflow.data.outputs import mark_complete, prepare_output_dir, write_csv
    from perturbflow.data.synthetic import simulate

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    folder = prepare_output_dir(args.out, overwrite=args.overwrite)
    (folder / "command.txt").write_text(
        " ".join([".venv/bin/python benchmarks/ddp.py", *sys.argv[1:]]) + "\n"
    )
    screen = folder / "screen.h5ad"
    simulate(**SCREEN).write_h5ad(screen)
    plan = [("single_s0", "single", 0, "")] + [
        (f"single_s{seed}", "single", seed, "") for seed in (1, 2)
    ]
    plan += [(f"ddp_{launcher}_s0", "ddp", 0, launcher) for launcher in args.launchers.split(",")]
    runs = {}
    for label, kind, seed, launcher in plan:
        result = folder / "fits" / label
        logger.info("%s: fitting", label)
        wall = _launch(kind, seed, launcher or "lightning", screen, result)
        runs[label] = {
            "result": json.loads((result / "result.json").read_text()),
            "deltas": pd.read_csv(result / "deltas.csv", index_col=0),
            "curves": pd.read_csv(result / "curves.csv"),
            "wall_s": wall,
        }
        logger.info("%s: %.1f s wall, fit %.1f s", label, wall, runs[label]["result"]["fit_s"])
        write_csv(runs[label]["deltas"].reset_index(), folder / f"deltas_{label}.csv", True)

    truth = _truth(screen, list(runs["single_s0"]["deltas"].index))
    reference = runs["single_s0"]
    rows = []
    for label, run in runs.items():
        if label == "single_s0":
            continue
        rows.append({"run": label, "vs": "single_s0", **_compare(run, reference)})
    agreement = pd.DataFrame(rows)
    seeds = agreement[agreement["run"].str.startswith("single")]
    metrics = [c for c in agreement.columns if c not in ("run", "vs")]
    tolerance = {metric: float(seeds[metric].max()) for metric in metrics}
    checks = {}
    for _, row in agreement[agreement["run"].str.startswith("ddp")].iterrows():
        run = runs[row["run"]]["result"]
        checks[row["run"]] = {
            **{metric: bool(row[metric] <= tolerance[metric]) for metric in metrics},
            f"world_size_{DDP_DEVICES}": run["world_size"] == DDP_DEVICES,
            "reload_identical": run["reload_identical"],
        }
    passed = all(all(check.values()) for check in checks.values())
    curves = pd.concat(
        [run["curves"].assign(run=label) for label, run in runs.items()], ignore_index=True
    )
    write_csv(curves[["run", "stage", "kind", "step", "loss"]], folder / "curves.csv", True)
    write_csv(agreement, folder / "agreement.csv", True)
    summary = {
        "screen": SCREEN,
        "split": {"kind": "simulation", "seed": SPLIT_SEED, "test": len(truth)},
        "scbig": {kind: run_options(kind) for kind in ("single", "ddp")},
        "predict_cells": PREDICT_CELLS,
        "runs": {
            label: {
                "wall_s": run["wall_s"],
                **{k: v for k, v in run["result"].items() if k != "history"},
                "flow_best_val": run["result"]["history"]["flow_best_val"],
                "flow_steps": run["result"]["history"]["flow_steps"],
                "pearson_delta_vs_truth": float(
                    np.corrcoef(run["deltas"].to_numpy().ravel(), truth.to_numpy().ravel())[0, 1]
                ),
            }
            for label, run in runs.items()
        },
        "tolerance": tolerance,
        "checks": checks,
        "passed": passed,
    }
    (folder / "ddp.json").write_text(json.dumps(summary, indent=2))
    (folder / "table.md").write_text(_table(summary, agreement))
    print(_table(summary, agreement))
    mark_complete(folder)
    if not passed:
        raise SystemExit("DDP disagrees with single-process training beyond the tolerance")


def _table(summary: dict, agreement: pd.DataFrame) -> str:
    lines = [
        "| run | processes | fit s | wall s | best val loss | r(Δ, truth) | reload identical |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, run in summary["runs"].items():
        lines.append(
            f"| {label} | {run['world_size']} | {run['fit_s']:.1f} | {run['wall_s']:.1f} | "
            f"{run['flow_best_val']:.5f} | {run['pearson_delta_vs_truth']:.4f} | "
            f"{run['reload_identical']} |"
        )
    metrics = [c for c in agreement.columns if c not in ("run", "vs")]
    lines += ["", "| vs single_s0 | " + " | ".join(metrics) + " |"]
    lines.append("|---" * (len(metrics) + 1) + "|")
    for _, row in agreement.iterrows():
        lines.append(f"| {row['run']} | " + " | ".join(f"{row[m]:.3g}" for m in metrics) + " |")
    tolerance = summary["tolerance"]
    lines.append("| tolerance | " + " | ".join(f"{tolerance[m]:.3g}" for m in metrics) + " |")
    lines += ["", f"passed: {summary['passed']}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
