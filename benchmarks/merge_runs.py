"""Merge run folders of benchmarks/ablation.py (e.g. split seeds run as separate jobs) into one.

Concatenates ``results.csv``, ``timings.csv`` and ``mean_weights.csv`` (a (screen, split,
model, seed) cell present in several folders is taken from the first), writes the merged
``table.md`` with the ablation's tables, checks and paired differences, and a ``command.txt``
listing every source folder's command followed by this merge.

Run: ``.venv/bin/python benchmarks/merge_runs.py --out runs/merged runs/a runs/b …``
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import pandas as pd

from perturbflow.data.outputs import mark_complete, prepare_output_dir, write_csv

KEYS = ("screen", "split", "model", "seed")


def _ablation():
    spec = importlib.util.spec_from_file_location(
        "ablation", Path(__file__).with_name("ablation.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def merge(tables: list[pd.DataFrame]) -> pd.DataFrame:
    """Rows of every table, a (screen, split, model, seed) cell kept from its first table."""
    kept, seen = [], set()
    for table in tables:
        cells = list(zip(*(table[k] for k in KEYS), strict=True))
        fresh = [cell not in seen for cell in cells]
        kept.append(table[fresh])
        seen |= set(cells)
    return pd.concat(kept, ignore_index=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "runs", nargs="+", type=Path, help="ablation run folders, in priority order"
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--models", default=None, help="comma-separated models to keep")
    parser.add_argument(
        "--reference",
        default="scbig",
        help="the variant the acceptance checks and paired differences are about",
    )
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()
    folder = prepare_output_dir(args.out, overwrite=args.overwrite)
    keep = set(args.models.split(",")) if args.models else None
    commands = []
    for name in ("results.csv", "timings.csv", "mean_weights.csv"):
        tables = [pd.read_csv(run / name) for run in args.runs if (run / name).exists()]
        if keep is not None:
            tables = [t[t["model"].isin(keep)] for t in tables]
        if tables:
            write_csv(merge(tables), folder / name, overwrite=True)
    for run in args.runs:
        commands.append((run / "command.txt").read_text().strip())
    commands.append(" ".join([".venv/bin/python benchmarks/merge_runs.py", *sys.argv[1:]]))
    (folder / "command.txt").write_text("\n".join(commands) + "\n")
    results = pd.read_csv(folder / "results.csv")
    ablation = _ablation()
    weights_file = folder / "mean_weights.csv"
    weights = pd.read_csv(weights_file) if weights_file.exists() else pd.DataFrame()
    (folder / "table.md").write_text(
        ablation.report(results, args.reference) + ablation.weights_table(weights)
    )
    mark_complete(folder)


if __name__ == "__main__":
    main()
