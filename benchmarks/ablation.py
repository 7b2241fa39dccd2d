"""What each scbig component contributes, on the shipped synthetic data.

Fits the full model and one variant per ablation switch (METHOD §2; ScBIGConfig), next to the
additive and control-mean baselines, on the GEARS simulation split of the default simulator, for
several seeds; evaluates every held-out condition and writes:

- ``results.csv``: long format (condition, subgroup, metric, value, model, seed)
- ``summary.csv``: mean ± sd over conditions and seeds per subgroup × variant × metric
- ``timings.csv``: fit and predict seconds per variant and seed
- ``table.md``: the README table — per subgroup and variant, the mean ± sd over seeds of the
  per-seed subgroup means of the headline metrics

Run: ``.venv/bin/python benchmarks/ablation.py --out runs/ablation --seeds 1,2,3``
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from pathlib import Path

import pandas as pd

from perturbflow.data import read
from perturbflow.data.splits import make_split
from perturbflow.data.synthetic import simulate
from perturbflow.eval import evaluate, noise_ceiling, summarize
from perturbflow.eval.de import de_genes
from perturbflow.models import get_model
from perturbflow.models.scbig import ScBIGConfig
from perturbflow.outputs import prepare_output_dir, write_csv

logger = logging.getLogger("ablation")

VARIANTS = {
    "scbig": {},
    "no_grc": {"programs": "random"},
    "no_module_attention": {"autoencoder": "mlp"},
    "no_alignment": {"alignment": False},
    "no_ot_pairing": {"ot_pairing": False},
    "pca_space": {"autoencoder": "pca"},
    "no_additive_prior": {"additive_prior": False},
    "no_calibration": {"calibrate_prior": False},
    "no_target_aware": {"target_aware_prior": False},
    # The flow's validated mean change also where the prior is calibrated (the earlier default).
    "validated_flow_mean": {"calibrated_flow_mean_weight": None},
}
# Every mean-shift baseline: the acceptance compares scbig with each of them.
BASELINES = ("additive", "control_mean", "linear", "ridge", "nearest_neighbor")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--seeds", default="1,2,3", help="comma-separated split/model seeds")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated")
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the simulated screen")
    parser.add_argument("--n-cells", type=int, default=100, help="predicted cells per condition")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("lightning", "lightning.pytorch", "perturbflow.models.baselines"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {sorted(VARIANTS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    folder = prepare_output_dir(args.out, overwrite=args.overwrite)
    dataset = read(simulate(seed=args.data_seed))

    frames, timings = [], []
    for seed in seeds:
        split = make_split("simulation", dataset.conditions, seed=seed)
        de = de_genes(dataset, list(split.test))
        runs = [(name, name, None) for name in BASELINES] + [
            (variant, "scbig", dataclasses.replace(ScBIGConfig(seed=seed), **VARIANTS[variant]))
            for variant in variants
        ]
        for label, model_name, config in runs:
            start = time.perf_counter()
            model = get_model(model_name, config).fit(dataset, split)
            fitted = time.perf_counter()
            predictions = model.predict(split.test, n_cells=args.n_cells, seed=seed)
            predicted = time.perf_counter()
            frames.append(evaluate(predictions, dataset, split, model=label, seed=seed, de=de))
            timings.append(
                {
                    "model": label,
                    "seed": seed,
                    "fit_s": fitted - start,
                    "predict_s": predicted - fitted,
                }
            )
            logger.info("seed %d %s: fit %.1fs", seed, label, fitted - start)
        frames.append(noise_ceiling(dataset, split, seed=seed, de=de))
        results = pd.concat(frames, ignore_index=True)
        # Written after every seed so an interrupted run keeps what it finished.
        write_csv(results, folder / "results.csv", overwrite=True)
        write_csv(summarize(results), folder / "summary.csv", overwrite=True)
        write_csv(pd.DataFrame(timings), folder / "timings.csv", overwrite=True)
        (folder / "table.md").write_text(
            markdown_table(results) + "\n" + markdown_acceptance(acceptance(results))
        )
    logger.info("wrote %s", folder)


HEADLINE = ("pearson_delta_de20", "mse_de20", "discrimination_l1", "energy_distance")


def markdown_table(results: pd.DataFrame) -> str:
    """Subgroup × variant table of headline metrics: mean over seeds of per-seed means."""
    per_seed = (
        results[results["metric"].isin(HEADLINE)]
        .groupby(["subgroup", "model", "metric", "seed"])["value"]
        .mean()
        .groupby(["subgroup", "model", "metric"])
        .agg(["mean", "std"])
    )
    lines = [
        "| subgroup | model | " + " | ".join(HEADLINE) + " |",
        "|---|---|" + "---|" * len(HEADLINE),
    ]
    for subgroup, model in per_seed.index.droplevel("metric").unique():
        cells = []
        for metric in HEADLINE:
            key = (subgroup, model, metric)
            if key in per_seed.index:
                mean, sd = per_seed.loc[key]
                cells.append(f"{mean:.3f} ± {sd:.3f}" if sd == sd else f"{mean:.3f}")
            else:
                cells.append("")
        lines.append(f"| {subgroup} | {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def acceptance(results: pd.DataFrame, model: str = "scbig") -> pd.DataFrame:
    """Issue-4 acceptance per subgroup, on means over seeds of per-seed subgroup means.

    Energy distance: ``model`` below every mean-shift baseline; ``pearson_delta_de20`` on combo
    subgroups: ``model`` at least additive's.
    """
    means = (
        results.groupby(["subgroup", "model", "metric", "seed"])["value"]
        .mean()
        .groupby(["subgroup", "model", "metric"])
        .mean()
    )
    rows = []
    for subgroup in sorted(results["subgroup"].unique()):
        if (subgroup, model, "energy_distance") not in means.index:
            continue
        energy = {
            name: means.get((subgroup, name, "energy_distance"), float("nan")) for name in BASELINES
        }
        best = min(energy, key=energy.get)
        ours = means[(subgroup, model, "energy_distance")]
        rows.append(
            {
                "subgroup": subgroup,
                "check": "energy below every mean-shift baseline",
                "scbig": ours,
                "reference": f"{best} {energy[best]:.3f}",
                "holds": bool(ours < energy[best]),
            }
        )
        if subgroup.startswith("combo"):
            ours = means[(subgroup, model, "pearson_delta_de20")]
            additive = means[(subgroup, "additive", "pearson_delta_de20")]
            rows.append(
                {
                    "subgroup": subgroup,
                    "check": "pearson_delta_de20 at least additive's",
                    "scbig": ours,
                    "reference": f"additive {additive:.3f}",
                    "holds": bool(ours >= additive),
                }
            )
    return pd.DataFrame(rows)


def markdown_acceptance(table: pd.DataFrame) -> str:
    lines = ["| subgroup | check | scbig | best reference | holds |", "|---|---|---|---|---|"]
    for row in table.itertuples():
        holds = "yes" if row.holds else "**no**"
        lines.append(
            f"| {row.subgroup} | {row.check} | {row.scbig:.3f} | {row.reference} | {holds} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
