"""Time and peak memory of fit and predict for every model on simulated data of growing size.

Each (model, size) runs in a fresh subprocess so its peak resident memory (``ru_maxrss``) is its
own. The simulated screen has ``--genes`` genes, 40 singles and 60 doubles, and enough cells per
condition to reach each requested total. Writes ``speed.json`` (one record per model × size:
seconds, cells/s, peak MiB, the settings used), ``table.md`` and ``command.txt``.

Run: ``.venv/bin/python benchmarks/speed.py --out runs/speed --sizes 10000,50000,200000``

``--sparse`` measures a sparse screen instead: the same simulator at a library size of 250 counts
(about 10% non-zero values), built as CSR one condition at a time (a million cells fit), written
once per size to ``screens/`` under ``--out`` by a process of its own, and read from that file by
each measured process. ``--backed scbig`` (comma-separated models) opens that file in anndata's
backed mode for those models instead of loading it. ``--scbig-options`` (JSON) overrides scbig's
budget, e.g. ``'{"flow_steps": 50}'``.

``--predict-conditions 100 --predict-cells 1000`` also measures scbig's prediction throughput:
scbig fitted once (``--predict-size`` cells, the same budget) on a simulation split of the screen,
so that its conditions include unseen genes and combinations with them, then ``predict`` of that
many of the screen's conditions (singles and doubles, in the screen's order) × cells, timed alone.
The record (``"measure": "predict_throughput"``) goes to ``speed.json`` and a table of its own
in ``table.md``; ``--sizes ''`` skips the fit/predict sweep.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import resource
import shlex
import sys
import time
from pathlib import Path

logger = logging.getLogger("speed")

# scbig's CPU defaults train for minutes on the demo data; at 50k–200k cells a benchmark run
# uses a fixed, recorded budget so the numbers measure throughput, not convergence.
SCBIG_OPTIONS = {"ae_epochs": 1, "flow_steps": 200, "val_every": 100}
SPARSE_LIBRARY_SIZE = 250.0  # counts per cell giving about 10% non-zero values at 2,000 genes


def _screen(n_cells: int, n_genes: int, library_size: float | None = None):
    from perturbflow.data.synthetic import simulate

    n_conditions = 1 + 40 + 60
    per_condition = max(10, n_cells // n_conditions)
    extra = {} if library_size is None else {"library_size": library_size, "sparse": True}
    return simulate(
        n_genes=n_genes,
        n_programs=16,
        n_perturbed=40,
        n_unmeasured=0,
        n_doubles=60,
        n_control_cells=n_cells - per_condition * (n_conditions - 1),
        n_cells_per_condition=per_condition,
        seed=0,
        **extra,
    )


def _write_sparse_screen(n_cells: int, n_genes: int, path: Path) -> None:
    """The simulated screen with ``X`` as CSR float32 and no counts layer, written to ``path``."""
    adata = _screen(n_cells, n_genes, SPARSE_LIBRARY_SIZE)  # CSR
    del adata.layers["counts"]
    adata.write_h5ad(path)


def _measure(
    model_name: str,
    n_cells: int,
    n_genes: int,
    screen: Path | None,
    scbig: dict,
    backed: bool,
    queue,
) -> None:
    from perturbflow.data import read
    from perturbflow.eval.loop import RunSpec, Seeds, run

    if screen is not None:
        dataset = read(screen, backed=backed)
    else:
        dataset = read(_screen(n_cells, n_genes))
    options = scbig if model_name == "scbig" else {}
    result = run(
        dataset,
        "combo",
        [RunSpec(model_name, model_name, options)],
        [Seeds(split=1, model=1, sampling=0)],
        n_cells=100,
        score=False,
    )
    fit_s, predict_s = (float(v) for v in result.timings.loc[0, ["fit_s", "predict_s"]])
    n_predicted = 100 * len(result.splits[1].test)
    queue.put(
        {
            "model": model_name,
            "n_cells": int(dataset.adata.n_obs),
            "n_genes": n_genes,
            "fit_s": fit_s,
            "predict_s": predict_s,
            "fit_cells_per_s": dataset.adata.n_obs / fit_s,
            "predict_cells_per_s": n_predicted / predict_s,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "options": options or {},
            "sparse": screen is not None,
            "backed": bool(dataset.adata.isbacked),
        }
    )


def _measure_prediction(
    n_cells: int, n_genes: int, n_conditions: int, cells_per_condition: int, scbig: dict, queue
) -> None:
    import torch

    from perturbflow.data import read
    from perturbflow.data.conditions import CONTROL_NAME
    from perturbflow.data.splits import make_split
    from perturbflow.eval.loop import RunSpec, fit_model

    dataset = read(_screen(n_cells, n_genes))
    split = make_split("simulation", dataset.conditions, seed=1)
    start = time.perf_counter()
    model = fit_model(RunSpec("scbig", "scbig", scbig), dataset, split, seed=1)
    fit_s = time.perf_counter() - start
    names = [name for name in dataset.conditions if name != CONTROL_NAME][:n_conditions]
    model.predict(names[:1], n_cells=10, seed=0)  # warm-up: the timing is of the steady state
    start = time.perf_counter()
    predicted = model.predict(names, n_cells=cells_per_condition, seed=0)
    predict_s = time.perf_counter() - start
    queue.put(
        {
            "measure": "predict_throughput",
            "model": "scbig",
            "n_cells": int(dataset.adata.n_obs),
            "n_genes": n_genes,
            "n_conditions": len(names),
            "n_doubles": sum("+" in name for name in names),
            "n_test_conditions": len(set(names) & set(split.test)),
            "cells_per_condition": cells_per_condition,
            "n_predicted": int(predicted.n_obs),
            "fit_s": fit_s,
            "predict_s": predict_s,
            "predict_cells_per_s": predicted.n_obs / predict_s,
            "torch_threads": torch.get_num_threads(),
            "mean_weights": model.mean_weights_,
            "shape_weights": model.shape_weights_,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "options": scbig,
        }
    )


def _run_process(context, target, args: tuple, label: str) -> dict:
    """``target(*args, queue)`` in a fresh process: its record, or an error record."""
    queue = context.Queue()
    process = context.Process(target=target, args=(*args, queue))
    process.start()
    process.join()
    if process.exitcode != 0:
        logger.warning("%s failed (exit %s)", label, process.exitcode)
        return {"error": f"exit {process.exitcode}"}
    record = queue.get()
    logger.info("%s", record)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/speed"))
    parser.add_argument("--sizes", default="10000,50000,200000")
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument(
        "--models", default="control_mean,additive,linear,ridge,nearest_neighbor,scbig"
    )
    parser.add_argument("--sparse", action="store_true", help="a sparse screen read from file")
    parser.add_argument(
        "--backed", default="", help="with --sparse: models that read the file in backed mode"
    )
    parser.add_argument("--scbig-options", default="{}", help="JSON overriding scbig's budget")
    parser.add_argument(
        "--predict-conditions", type=int, default=0, help="scbig prediction throughput: conditions"
    )
    parser.add_argument("--predict-cells", type=int, default=1000, help="... cells per condition")
    parser.add_argument("--predict-size", type=int, default=10000, help="... cells of its screen")
    args = parser.parse_args()
    scbig = {**SCBIG_OPTIONS, **json.loads(args.scbig_options)}
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "command.txt").write_text(
        shlex.join([".venv/bin/python", "benchmarks/speed.py", *sys.argv[1:]]) + "\n"
    )
    backed = {name for name in args.backed.split(",") if name}
    if backed and not args.sparse:
        parser.error("--backed needs --sparse (a screen file to open)")
    records = []
    context = mp.get_context("spawn")
    for size in (int(s) for s in args.sizes.split(",") if s):
        screen = None
        if args.sparse:
            screen = args.out / "screens" / f"sparse_{size}x{args.genes}.h5ad"
            if not screen.exists():
                screen.parent.mkdir(exist_ok=True)
                writer = context.Process(
                    target=_write_sparse_screen, args=(size, args.genes, screen)
                )
                writer.start()
                writer.join()
                if writer.exitcode != 0:
                    raise SystemExit(f"writing the sparse screen {screen} failed")
        for model in args.models.split(","):
            record = _run_process(
                context,
                _measure,
                (model, size, args.genes, screen, scbig, model in backed),
                f"{model} at {size}",
            )
            records.append({"model": model, "n_cells": size, **record})
            _write(args.out, records)
    if args.predict_conditions > 0:
        record = _run_process(
            context,
            _measure_prediction,
            (args.predict_size, args.genes, args.predict_conditions, args.predict_cells, scbig),
            "scbig prediction throughput",
        )
        records.append({"measure": "predict_throughput", "n_cells": args.predict_size, **record})
        _write(args.out, records)


def _write(out: Path, records: list[dict]) -> None:
    (out / "speed.json").write_text(json.dumps(records, indent=2))
    (out / "table.md").write_text(speed_table(records))


def speed_table(records: list[dict]) -> str:
    """Markdown: one row per (cells, model) with fit/predict seconds and peak memory; prediction
    throughput records in a table of their own."""
    sweep = [r for r in records if r.get("measure") != "predict_throughput"]
    throughput = [r for r in records if r.get("measure") == "predict_throughput"]
    lines = []
    if sweep:
        lines += _sweep_table(sweep)
    if throughput:
        lines += ["", *_throughput_table(throughput)] if lines else _throughput_table(throughput)
    return "\n".join(lines) + "\n"


def _throughput_table(records: list[dict]) -> list[str]:
    lines = [
        "| fit cells | genes | conditions (doubles, test) | cells each | threads | predict s | "
        "predicted cells/s | peak MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        if "error" in r:
            lines.append(f"| {r['n_cells']} | | {r['error']} | | | | | |")
            continue
        lines.append(
            f"| {r['n_cells']} | {r['n_genes']} | {r['n_conditions']} ({r['n_doubles']}, "
            f"{r['n_test_conditions']}) | {r['cells_per_condition']} | {r['torch_threads']} | "
            f"{r['predict_s']:.2f} | {r['predict_cells_per_s']:.0f} | {r['peak_rss_mib']:.0f} |"
        )
    return lines


def _sweep_table(records: list[dict]) -> list[str]:
    lines = [
        "| cells | genes | model | fit s | predict s | fit cells/s | peak MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in records:
        if "error" in r:
            lines.append(f"| {r['n_cells']} | | {r['model']} | {r['error']} | | | |")
            continue
        model = f"{r['model']} (backed)" if r.get("backed") else r["model"]
        lines.append(
            f"| {r['n_cells']} | {r['n_genes']} | {model} | {r['fit_s']:.1f} | "
            f"{r['predict_s']:.2f} | {r['fit_cells_per_s']:.0f} | {r['peak_rss_mib']:.0f} |"
        )
    return lines


if __name__ == "__main__":
    main()
