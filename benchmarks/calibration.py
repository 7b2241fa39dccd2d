"""Are the prediction intervals right? Nominal vs empirical coverage on held-out conditions.

For each screen and split seed, every ensemble (``--ensembles``: ``label=model:kind`` with kind
``seeds`` — ``--members`` model seeds — or ``bootstrap`` — model seeds plus a bootstrap resample
of the cells per member) is fitted on the split's training conditions and predicts the pseudobulk
deltas of its validation and test conditions (:mod:`perturbflow.eval.ensemble`). Intervals at
``--nominals`` are checked against the test conditions' measured deltas
(:mod:`perturbflow.eval.calibration`):

- ``quantile``: the members' empirical quantiles;
- ``gaussian``: members' mean ± z · members' sd;
- ``gaussian+noise``: the sd also holds the measured delta's standard error (from training cells)
  and, with ``--draws`` above 1, the spread over sampled control populations;
- ``gaussian+noise, val-scaled``: that sd times one factor per level that gives the nominal
  coverage on the validation conditions (never on the test conditions).

Writes ``calibration.csv`` (long: screen, seed, model, interval, subgroup, nominal, coverage, n,
n_conditions, mean_width), ``budget.csv`` (rms of error, members' sd and measurement se),
``timings.csv``, ``reliability.png``, ``table.md`` and ``command.txt``.

Run: ``.venv/bin/python benchmarks/calibration.py --out runs/calibration \
--screens runs/screens/a.h5ad,… --seeds 1,2``
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import pandas as pd

from perturbflow.data import read
from perturbflow.data.outputs import mark_complete, prepare_output_dir, write_csv
from perturbflow.data.splits import make_split
from perturbflow.eval.calibration import (
    ALL_CONDITIONS,
    coverage_table,
    measured_deltas,
    measurement_se,
    sd_scale,
    uncertainty_budget,
)
from perturbflow.eval.ensemble import fit_ensemble
from perturbflow.eval.loop import RunSpec
from perturbflow.report.calibration_figures import reliability_plot

logger = logging.getLogger("calibration")

SCREENS = (
    "runs/screens/grnsim_dorothea_s2.h5ad",
    "runs/screens/grnsim_collectri_s3.h5ad",
    "runs/screens/grnsim_collectri_s1_fresh.h5ad",
)
ENSEMBLE_KINDS = ("seeds", "bootstrap")
TARGET = (0.7, 0.9)  # the acceptance band of the 80% intervals
CHECKED_LEVEL = 0.8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/calibration"))
    parser.add_argument("--screens", default=",".join(SCREENS))
    parser.add_argument("--split", default="combo")
    parser.add_argument("--seeds", default="1", help="split seeds")
    parser.add_argument("--members", type=int, default=5, help="model seeds per ensemble")
    parser.add_argument(
        "--ensembles",
        default="scbig=scbig:seeds,scbig_boot=scbig:bootstrap,ridge_boot=ridge:bootstrap,"
        "linear_boot=linear:bootstrap",
        help="label=model:kind, comma-separated; kind is seeds or bootstrap",
    )
    parser.add_argument(
        "--options",
        default="{}",
        help='JSON model options by model name, e.g. \'{"scbig": {"flow_steps": 300}}\'',
    )
    parser.add_argument("--nominals", default="0.5,0.8,0.9")
    parser.add_argument("--n-cells", type=int, default=300, help="predicted cells per condition")
    parser.add_argument(
        "--draws",
        type=int,
        default=1,
        help="sampling seeds per member; above 1 their spread joins the +noise sd",
    )
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("lightning", "lightning.pytorch", "perturbflow.models", "perturbflow.data"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    options = json.loads(args.options)
    ensembles = parse_ensembles(args.ensembles, options, parser)
    nominals = tuple(float(v) for v in args.nominals.split(","))
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    member_seeds = tuple(range(args.members))
    folder = prepare_output_dir(args.out, overwrite=args.overwrite)
    (folder / "command.txt").write_text(
        " ".join(
            [
                "OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 "
                ".venv/bin/python benchmarks/calibration.py",
                *(f"'{a}'" if " " in a or "{" in a else a for a in sys.argv[1:]),
            ]
        )
        + "\n"
    )
    coverage, budgets, timings = [], [], []

    def save() -> None:
        table = pd.concat(coverage, ignore_index=True)
        budget = pd.concat(budgets, ignore_index=True)
        write_csv(table, folder / "calibration.csv", overwrite=True)
        write_csv(budget, folder / "budget.csv", overwrite=True)
        write_csv(pd.DataFrame(timings), folder / "timings.csv", overwrite=True)
        reliability_plot(table[table["subgroup"] == ALL_CONDITIONS]).savefig(
            folder / "reliability.png", dpi=120
        )
        (folder / "table.md").write_text(report(table, budget, args, ensembles))

    paths = [Path(s.strip()) for s in args.screens.split(",") if s.strip()]
    datasets = {path: read(path) for path in paths}
    # Seed-major, so that a stopped run has whole replicates of every screen.
    for seed in seeds:
        for path, dataset in datasets.items():
            split = make_split(args.split, dataset.conditions, seed=seed)
            test, val = list(split.test), list(split.val)
            truth = measured_deltas(dataset, test + val)
            noise = measurement_se(dataset, test + val, reference=list(split.train))
            for label, (spec, kind) in ensembles.items():
                ensemble = fit_ensemble(
                    dataset,
                    split,
                    spec,
                    test + val,
                    seeds=member_seeds,
                    n_cells=args.n_cells,
                    draws=args.draws,
                    bootstrap=kind == "bootstrap",
                )
                on_test = [member.loc[test] for member in ensemble.members]
                on_val = [member.loc[val] for member in ensemble.members]
                spreads = [noise]
                if ensemble.resampling_sd is not None:
                    spreads.append(ensemble.resampling_sd)
                extra = [spread.loc[test] for spread in spreads]
                scale = {
                    level: sd_scale(
                        on_val, truth.loc[val], level, [spread.loc[val] for spread in spreads]
                    )
                    for level in nominals
                }
                groups = {name: split.subgroups[name] for name in test}
                common = {"model": label, "nominals": nominals, "subgroups": groups}
                frames = [
                    coverage_table(on_test, truth, method="quantile", **common),
                    coverage_table(on_test, truth, **common),
                    coverage_table(
                        on_test, truth, extra_sd=extra, label="gaussian+noise", **common
                    ),
                    coverage_table(
                        on_test,
                        truth,
                        extra_sd=extra,
                        scale=scale,
                        label="gaussian+noise, val-scaled",
                        **common,
                    ),
                ]
                table = pd.concat(frames, ignore_index=True)
                table.insert(0, "seed", seed)
                table.insert(0, "screen", path.stem)
                coverage.append(table)
                budget = uncertainty_budget(
                    on_test, truth, model=label, extra_sd={"measurement_se": noise.loc[test]}
                )
                budget = pd.concat(
                    [
                        budget,
                        pd.DataFrame(
                            [
                                {"model": label, "term": f"val_scale_{level:g}", "rms": value}
                                for level, value in scale.items()
                            ]
                        ),
                    ],
                    ignore_index=True,
                )
                budget.insert(0, "seed", seed)
                budget.insert(0, "screen", path.stem)
                budgets.append(budget)
                timings += [
                    {"screen": path.stem, "seed": seed, "model": label, "member": k, "fit_s": s}
                    for k, s in enumerate(ensemble.fit_seconds)
                ]
                save()
                logger.info(
                    "%s seed %d %s: 80%% coverage %s",
                    path.stem,
                    seed,
                    label,
                    table[(table["nominal"] == 0.8) & (table["subgroup"] == ALL_CONDITIONS)]
                    .set_index("interval")["coverage"]
                    .round(3)
                    .to_dict(),
                )
    mark_complete(folder)
    logger.info("wrote %s", folder)


def parse_ensembles(text: str, options: dict, parser) -> dict[str, tuple[RunSpec, str]]:
    """``label=model:kind`` items → run spec and ensemble kind per label."""
    ensembles = {}
    for item in [t.strip() for t in text.split(",") if t.strip()]:
        label, _, rest = item.partition("=")
        model, _, kind = rest.rpartition(":")
        if not model or kind not in ENSEMBLE_KINDS:
            parser.error(
                f"--ensembles item {item!r}: write label=model:kind, kind in seeds|bootstrap"
            )
        ensembles[label] = (RunSpec(label, model, dict(options.get(model, {}))), kind)
    return ensembles


def report(table: pd.DataFrame, budget: pd.DataFrame, args, ensembles) -> str:
    """Coverage per ensemble and interval (mean ± sd over screens × split seeds), the 80% check
    per screen, and the uncertainty budget that explains the misses."""
    rows = table[table["subgroup"] == ALL_CONDITIONS]
    replicates = rows[["screen", "seed"]].drop_duplicates()
    lines = [
        f"{args.split} split; split seeds {args.seeds}; {args.members} members per ensemble; "
        f"{len(replicates)} screen × seed replicates; truth = the held-out conditions' measured "
        "pseudobulk deltas. Ensembles: "
        + "; ".join(
            f"`{label}` = {spec.model} ({kind}"
            + (f", options {dict(spec.options)}" if spec.options else "")
            + ")"
            for label, (spec, kind) in ensembles.items()
        )
        + ". Figure: `reliability.png` in the run folder.\n",
        "Empirical coverage, mean ± sd over replicates (80% width: mean interval width):\n",
        "| ensemble | interval | "
        + " | ".join(f"{n:.0%}" for n in _levels(rows))
        + " | 80% width |",
        "|---|---|" + "---|" * (len(_levels(rows)) + 1),
    ]
    for (model, interval), group in rows.groupby(["model", "interval"], sort=False):
        cells = []
        for level in _levels(rows):
            values = group[group["nominal"] == level]["coverage"]
            cells.append(
                f"{values.mean():.3f} ± {values.std(ddof=1) if len(values) > 1 else 0:.3f}"
            )
        width = group[group["nominal"] == CHECKED_LEVEL]["mean_width"].mean()
        lines.append(f"| {model} | {interval} | " + " | ".join(cells) + f" | {width:.3f} |")
    low, high = TARGET
    lines += [
        "",
        f"80% coverage per screen (mean over split seeds); in [{low}, {high}]: ✓, else the "
        "distance to the band:\n",
    ]
    per_screen = (
        rows[rows["nominal"] == CHECKED_LEVEL]
        .groupby(["model", "interval", "screen"], sort=False)["coverage"]
        .mean()
        .unstack("screen")
    )
    screens = list(per_screen.columns)
    lines += [
        "| ensemble | interval | " + " | ".join(screens) + " |",
        "|---|---|" + "---|" * len(screens),
    ]
    for (model, interval), values in per_screen.iterrows():
        cells = [_check(values[s], low, high) for s in screens]
        lines.append(f"| {model} | {interval} | " + " | ".join(cells) + " |")
    terms = budget.groupby(["model", "term"], sort=False)["rms"].mean().unstack("term")
    lines += [
        "",
        "Why: root mean square over test entries of the error (truth − ensemble mean), the "
        "members' sd and the measurement's standard error, mean over replicates; `val_scale_*` "
        "is the factor on the Gaussian+noise sd that the validation conditions asked for. A "
        "calibrated Gaussian interval needs error² ≈ member_sd² + measurement_se².\n",
        "| ensemble | " + " | ".join(terms.columns) + " |",
        "|---|" + "---|" * len(terms.columns),
    ]
    for model, values in terms.iterrows():
        lines.append(f"| {model} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
    return "\n".join(lines) + "\n"


def _levels(rows: pd.DataFrame) -> list[float]:
    return sorted(rows["nominal"].unique())


def _check(value: float, low: float, high: float) -> str:
    if low <= value <= high:
        return f"{value:.3f} ✓"
    gap = value - low if value < low else value - high
    return f"{value:.3f} ({gap:+.3f})"


if __name__ == "__main__":
    main()
