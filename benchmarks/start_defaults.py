"""How ``calibrated_additive`` (scbig's start) sets its defaults, measured with paired seeds.

Variants of the one estimator, each against the default, per screen, split kind and seed:

- ``all_genes``: category scales fitted on every gene (``calibration_genes=0``) instead of each
  training condition's 20 most changed genes;
- ``no_propagation``: the on-target residual of a gene without a training single stays in its own
  column (``propagate=False``) instead of also moving the genes that co-vary with it;
- ``network``: a combination whose genes all have a training single also adds the learned network
  map of its residual (``network=True``, the ``network_additive`` baseline);
- ``no_combination_genes``: a gene without a training single takes the unseen-gene fallback even
  when training combinations measure it (``combination_genes=False``);
- ``shrinkage`` and ``network_shrinkage``: each training single's delta shrunk gene by gene by its
  sampling noise (``shrinkage=1``), without and with the network map (compare the latter with
  ``network``);
- ``pooled_singles``: each seen gene's delta is its effect fitted on the training singles and
  combinations together (``combination_weight=1``, ``pooled_additive``'s estimate), without
  and with the network map (``network_pooled_singles``: pooled only where the map is not used;
  compare with ``network``); ``single_means``: the seen genes' single means instead
  (``combination_weight=0``; against the default, which pools);
- ``pooled_choice`` and ``network_pooled_choice``: pooled effects only where they predict the
  training combinations, held out one at a time, better than the singles' deltas (with the map)
  do (``pooled_if_better``, the default of ``combination_weight=1``; compare the latter with
  ``network``).

``--drop-singles F`` removes the single of a seeded share ``F`` of the perturbed genes from each
screen before splitting, so that some genes are measured only in combinations (as in Norman
2019, whose doubles include genes never perturbed alone); the screen's label gets ``_dropF``.

Each job is ``SCREEN:SPLIT:SEEDS`` (a registered dataset or an ``.h5ad`` path; seeds joined by
``-``), so choice data and held-out data (another screen, other split seeds) are stated in the
command; ``--variants`` picks the variants to run (all by default). Writes ``results.csv``
(long), ``paired.csv`` and ``table.md`` (mean over seeds of each
variant minus the default, with a 95 % bootstrap CI over seeds and the count of seeds where the
default is better) into ``--out``.

Run: ``.venv/bin/python benchmarks/start_defaults.py --out runs/start_defaults --jobs \
runs/screens/grnsim_dorothea_s2.h5ad:simulation:1-2-3-4-5,papalexi21_thp1:unseen_single:1-2-3``
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from perturbflow.data import read
from perturbflow.data.conditions import CONTROL_NAME
from perturbflow.data.datasets import DATASETS, load_dataset
from perturbflow.data.outputs import mark_complete, prepare_output_dir, write_csv
from perturbflow.eval.loop import RunSpec, run

logger = logging.getLogger("start_defaults")

DEFAULT = "calibrated_additive"
VARIANTS = {
    "all_genes": {"calibration_genes": 0},
    "no_propagation": {"propagate": False},
    "network": {"network": True},
    "no_combination_genes": {"combination_genes": False},
    "shrinkage": {"shrinkage": 1.0},
    "network_shrinkage": {"network": True, "shrinkage": 1.0},
    "pooled_singles": {"combination_weight": 1.0, "pooled_if_better": False},
    "network_pooled_singles": {
        "network": True,
        "combination_weight": 1.0,
        "pooled_if_better": False,
    },
    "pooled_choice": {"combination_weight": 1.0},
    "network_pooled_choice": {"network": True, "combination_weight": 1.0},
    "single_means": {"combination_weight": 0.0},
}
METRICS = ("pearson_delta_de20", "mse_de20", "discrimination_l1", "energy_distance")
# Higher is better for these; lower for the rest.
HIGHER = ("pearson_delta_de20", "discrimination_l1")


def parse_job(text: str) -> tuple[str, str, list[int]]:
    """``SCREEN:SPLIT:SEEDS`` → (screen, split kind, seeds)."""
    parts = text.rsplit(":", 2)
    if len(parts) != 3:
        raise ValueError(f"a job is SCREEN:SPLIT:SEEDS (seeds joined by '-'), got {text!r}")
    screen, kind, seeds = parts
    try:
        return screen, kind, [int(s) for s in seeds.split("-")]
    except ValueError:
        raise ValueError(f"seeds of job {text!r} must be integers joined by '-'") from None


def drop_singles(dataset, share: float, seed: int):
    """``dataset`` without the single conditions of a seeded ``share`` of its single genes (their
    combinations stay) and the names dropped."""
    singles = sorted(
        name for name in dataset.conditions if name != CONTROL_NAME and "+" not in name
    )
    n_drop = int(round(share * len(singles)))
    dropped = sorted(np.random.default_rng(seed).choice(singles, n_drop, replace=False).tolist())
    return dataset.subset([n for n in dataset.conditions if n not in set(dropped)]), dropped


def paired(results: pd.DataFrame, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Each variant minus the default per (screen, split, subgroup, metric), paired by seed."""
    means = results.groupby(["screen", "split", "subgroup", "metric", "model", "seed"])[
        "value"
    ].mean()
    table = means.unstack("model")
    rng = np.random.default_rng(seed)
    rows = []
    for key, block in table.groupby(level=["screen", "split", "subgroup", "metric"]):
        for variant in (v for v in VARIANTS if v in block):  # the variants that were run
            difference = (block[variant] - block[DEFAULT]).dropna().to_numpy()
            if not len(difference):
                continue
            boot = rng.choice(difference, (n_boot, len(difference))).mean(axis=1)
            sign = -1.0 if key[3] in HIGHER else 1.0
            rows.append(
                {
                    "screen": key[0],
                    "split": key[1],
                    "subgroup": key[2],
                    "metric": key[3],
                    "variant": variant,
                    "default": float(block[DEFAULT].mean()),
                    "difference": float(difference.mean()),
                    "ci_low": float(np.quantile(boot, 0.025)),
                    "ci_high": float(np.quantile(boot, 0.975)),
                    "n_seeds": len(difference),
                    "default_better": int((sign * difference > 0).sum()),
                }
            )
    return pd.DataFrame(rows)


def markdown(table: pd.DataFrame) -> str:
    lines = [
        "| screen | split | subgroup | metric | variant | default | variant − default | 95% CI "
        "| seeds default better |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in table.itertuples():
        lines.append(
            f"| {row.screen} | {row.split} | {row.subgroup} | {row.metric} | {row.variant} | "
            f"{row.default:.3f} | {row.difference:+.3f} | [{row.ci_low:+.3f}, {row.ci_high:+.3f}] "
            f"| {row.default_better}/{row.n_seeds} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/start_defaults"))
    parser.add_argument("--jobs", required=True, help="comma-separated SCREEN:SPLIT:SEEDS")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="variants to run")
    parser.add_argument(
        "--drop-singles", type=float, default=0.0, help="share of singles removed per screen"
    )
    parser.add_argument("--drop-seed", type=int, default=0, help="seed of the removed singles")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    if not 0.0 <= args.drop_singles < 1.0:
        parser.error(f"--drop-singles must be in [0, 1), got {args.drop_singles}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("perturbflow").setLevel(logging.WARNING)
    try:
        jobs = [parse_job(text.strip()) for text in args.jobs.split(",") if text.strip()]
    except ValueError as error:
        parser.error(str(error))
    folder = prepare_output_dir(args.out, overwrite=args.overwrite)
    (folder / "command.txt").write_text(
        " ".join([".venv/bin/python benchmarks/start_defaults.py", *sys.argv[1:]]) + "\n"
    )
    runs = [RunSpec(DEFAULT, DEFAULT)] + [
        RunSpec(name, DEFAULT, VARIANTS[name]) for name in variants
    ]
    frames = []
    for screen, kind, seeds in jobs:
        dataset = load_dataset(screen) if screen in DATASETS else read(screen)
        label = Path(screen).stem if screen.endswith(".h5ad") else screen
        if args.drop_singles > 0:
            dataset, dropped = drop_singles(dataset, args.drop_singles, args.drop_seed)
            label = f"{label}_drop{args.drop_singles:g}"
            logger.info("%s: singles of %d genes removed: %s", label, len(dropped), dropped)
        logger.info("%s %s seeds %s", label, kind, seeds)
        result = run(dataset, kind, runs, seeds, noise_ceiling_row=False)
        frame = result.results[result.results["metric"].isin(METRICS)]
        frames.append(frame.assign(screen=label, split=kind))
        results = pd.concat(frames, ignore_index=True)
        write_csv(results, folder / "results.csv", overwrite=True)
        table = paired(results)
        write_csv(table, folder / "paired.csv", overwrite=True)
        (folder / "table.md").write_text(markdown(table))
    mark_complete(folder)
    logger.info("wrote %s", folder)


if __name__ == "__main__":
    main()
