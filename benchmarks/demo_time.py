"""Wall time of `perturbflow demo` (and of each model's fit inside it), for the results file.

Runs the installed CLI in a subprocess, as a user would, into a temporary folder; writes
``demo_time.json`` (wall seconds, the demo's own fit/predict timings, CPU count, thread limits),
``table.md`` and ``command.txt`` into ``--out``.

Run: ``.venv/bin/python benchmarks/demo_time.py --out runs/demo_time``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from perturbflow.data.outputs import mark_complete, prepare_output_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/demo_time"))
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()
    folder = prepare_output_dir(args.out, overwrite=args.overwrite)
    (folder / "command.txt").write_text(
        " ".join([".venv/bin/python benchmarks/demo_time.py", *sys.argv[1:]]) + "\n"
    )
    cli = Path(sys.executable).parent / "perturbflow"
    with tempfile.TemporaryDirectory() as scratch:
        started = time.perf_counter()
        subprocess.run(
            [str(cli), "demo", "--out", f"{scratch}/demo"], check=True, capture_output=True
        )
        wall = time.perf_counter() - started
        timings = pd.read_csv(f"{scratch}/demo/timings.csv")
    record = {
        "wall_s": wall,
        "cpu_count": os.cpu_count(),
        "threads": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")},
        "fit_s": dict(zip(timings["model"], timings["fit_s"], strict=True)),
        "predict_s": dict(zip(timings["model"], timings["predict_s"], strict=True)),
    }
    (folder / "demo_time.json").write_text(json.dumps(record, indent=2) + "\n")
    fits = ", ".join(f"{m} {s:.1f} s" for m, s in sorted(record["fit_s"].items()))
    (folder / "table.md").write_text(
        f"`perturbflow demo` wall time: **{wall:.0f} s** on {os.cpu_count()} CPU cores "
        f"(imports, simulation, every model, evaluation, files). Fit times: {fits}.\n"
    )
    mark_complete(folder)


if __name__ == "__main__":
    main()
