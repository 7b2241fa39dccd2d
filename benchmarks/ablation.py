"""What scbig and each of its components add, on screens with a known answer.

Fits the full model, one variant per ablation switch (docs/method.md §2; ScBIGConfig) and every
mean-shift baseline on each screen (the shipped simulator or GRN screens: registered dataset
names or ``.h5ad`` paths), split kind and seed; evaluates every held-out condition and writes:

- ``results.csv``: long format (condition, subgroup, metric, value, model, seed, screen, split)
- ``summary.csv``: mean ± sd over conditions and seeds per screen × split × subgroup × model
- ``timings.csv``: fit and predict seconds per model, screen, split and seed
- ``mean_weights.csv``: the flow mean and shape weights scbig chose per condition kind, with
  the cross-validation error of every candidate mean weight, and whether its start took pooled
  effects for the seen genes (``start_pooled``)
- ``table.md``: per screen, split and subgroup the mean ± sd over seeds of the per-seed subgroup
  means of the headline metrics; the acceptance checks; and the paired differences (with a
  bootstrap CI over seeds) of each ablation variant against the full model

Run: ``.venv/bin/python benchmarks/ablation.py --out runs/ablation --seeds 1,2,3,4,5 \
--screens grnsim_collectri_s1,runs/screens/grnsim_dorothea_s2.h5ad --splits combo,simulation``
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from perturbflow.data import read
from perturbflow.data.datasets import DATASETS, load_dataset
from perturbflow.data.outputs import mark_complete, prepare_output_dir, write_csv
from perturbflow.data.synthetic import simulate
from perturbflow.eval import summarize
from perturbflow.eval.loop import RunSpec, run
from perturbflow.report.markdown import metrics_table

logger = logging.getLogger("ablation")

# scBIG's published components; each component variant switches one of them off. The package's
# default scbig (``scbig_default``) leaves out those the ablation found to add nothing
# (docs/method.md §7), so the variants are stated against the published set.
SCBIG_PAPER = {"programs": "grc", "autoencoder": "gcae", "alignment": True, "ot_pairing": True}
VARIANTS = {
    "scbig": SCBIG_PAPER,
    "scbig_default": {},
    # The default with the training combinations' starts cross-fitted (ScBIGConfig).
    "default_cross_fit": {"cross_fit_start": True},
    # The default's flow trained at 4x the learning rate, keeping its last weights (validated
    # once, at the end) rather than those with the best validation mean.
    "fast_flow": {"flow_lr": 2e-3, "val_every": 1000},
    # Each seen gene's start delta fitted on the training combinations too (pooled_additive's
    # estimate, combinations at full weight) where that predicts held-out training combinations
    # better than the singles' deltas with the network map (prior_pooled_if_better). The default
    # since it was measured; the name labels the runs that measured it against singles_start.
    "pooled_start": {"prior_combination_weight": 1.0},
    # The flow integrated in 5 midpoint steps (the default since it was measured against 20).
    "ode5": {"ode_steps": 5},
    # Each seen gene's start delta its single's own mean (the default before pooled_start).
    "singles_start": {"prior_combination_weight": 0.0},
    # The default with seen-gene conditions started halfway to pooled_additive's mean.
    "half_pooled_start": {"prior_pooled_share": 0.5},
    # The default with each single's start delta shrunk gene by gene by its sampling noise.
    "shrunk_start": {"prior_shrinkage": 1.0},
    "no_grc": {**SCBIG_PAPER, "programs": "random"},
    "no_module_attention": {**SCBIG_PAPER, "autoencoder": "mlp"},
    "no_alignment": {**SCBIG_PAPER, "alignment": False},
    "no_ot_pairing": {**SCBIG_PAPER, "ot_pairing": False},
    "pca_space": {**SCBIG_PAPER, "autoencoder": "pca"},
    "control_start": {**SCBIG_PAPER, "start": "control"},
    "combinator_start": {**SCBIG_PAPER, "start": "combinator"},
    "additive_start": {**SCBIG_PAPER, "calibrate_prior": False, "target_aware_prior": False},
    "no_calibration": {**SCBIG_PAPER, "calibrate_prior": False},
    "no_target_aware": {**SCBIG_PAPER, "target_aware_prior": False},
    "no_delta_conditioning": {**SCBIG_PAPER, "delta_conditioning": False},
    # The flow's whole change (mean and reshaping) for every kind, without cross-validation.
    "flow_mean": {**SCBIG_PAPER, "mean_weight": 1.0, "shape_weight": 1.0},
}
# Every mean-shift baseline: the acceptance compares scbig with each of them.
BASELINES = (
    "additive",
    "calibrated_additive",
    "network_additive",
    "combinator",
    "control_mean",
    "linear",
    "ridge",
    "nearest_neighbor",
    "pooled_additive",
)


def load_screen(name: str, data_seed: int):
    """``synthetic`` (the shipped simulator at ``data_seed``), a registered dataset or a path."""
    if name == "synthetic":
        return read(simulate(seed=data_seed))
    if name in DATASETS:
        return load_dataset(name)
    return read(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--screens", default="synthetic", help="comma-separated names or paths")
    parser.add_argument("--splits", default="simulation", help="comma-separated split kinds")
    parser.add_argument("--seeds", default="1,2,3", help="comma-separated split/model seeds")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated")
    parser.add_argument("--baselines", default=",".join(BASELINES), help="comma-separated")
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic screen")
    parser.add_argument("--n-cells", type=int, default=100, help="predicted cells per condition")
    parser.add_argument(
        "--reference",
        default="scbig",
        help="the variant the acceptance checks and paired differences are about",
    )
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument(
        "--tables-only", action="store_true", help="rewrite OUT/table.md from OUT/results.csv"
    )
    args = parser.parse_args()
    if args.tables_only:
        results = pd.read_csv(args.out / "results.csv")
        weights_file = args.out / "mean_weights.csv"
        chosen = pd.read_csv(weights_file) if weights_file.exists() else pd.DataFrame()
        (args.out / "table.md").write_text(report(results, args.reference) + weights_table(chosen))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("lightning", "lightning.pytorch", "perturbflow.models.baselines"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {sorted(VARIANTS)}")
    baselines = [b.strip() for b in args.baselines.split(",") if b.strip()]
    seeds = [int(s) for s in args.seeds.split(",")]
    folder = prepare_output_dir(args.out, overwrite=args.overwrite)
    (folder / "command.txt").write_text(
        " ".join([".venv/bin/python benchmarks/ablation.py", *sys.argv[1:]]) + "\n"
    )

    frames, timings, weights = [], [], []
    runs = [RunSpec(name, name) for name in baselines] + [
        RunSpec(variant, "scbig", VARIANTS[variant]) for variant in variants
    ]
    for screen in [s.strip() for s in args.screens.split(",") if s.strip()]:
        dataset = load_screen(screen, args.data_seed)
        label = Path(screen).stem if screen.endswith(".h5ad") else screen
        for kind in [k.strip() for k in args.splits.split(",") if k.strip()]:
            for seed in seeds:

                def chosen_weights(spec, replicate, model, kind=kind, label=label):
                    # What the cross-validation chose for the flow's mean change and reshaping
                    # and for the combinator's share in a combination's start.
                    blends = getattr(model, "combinator_weights_", {})
                    for condition_kind, row in getattr(model, "mean_weight_cv_", {}).items():
                        weights.append(
                            {
                                "screen": label,
                                "split": kind,
                                "model": spec.label,
                                "seed": replicate.split,
                                "kind": condition_kind,
                                "weight": model.mean_weights_[condition_kind],
                                "shape_weight": model.shape_weights_[condition_kind],
                                "combinator_weight": blends.get(condition_kind, float("nan")),
                                "start_pooled": _start_pooled(model),
                                "n_conditions": row["n_conditions"],
                                **{f"mse_w{w}": e for w, e in row["mse"].items()},
                            }
                        )

                result = run(
                    dataset,
                    kind,
                    runs,
                    [seed],
                    n_cells=args.n_cells,
                    on_fitted=chosen_weights,
                    progress=lambda text, label=label, kind=kind: logger.info(
                        "%s %s %s", label, kind, text
                    ),
                )
                frames.append(result.results.assign(screen=label, split=kind))
                timings.append(result.timings.assign(screen=label, split=kind))
                results = pd.concat(frames, ignore_index=True)
                # Written after every seed so an interrupted run keeps what it finished.
                write_csv(results, folder / "results.csv", overwrite=True)
                write_csv(summarize_screens(results), folder / "summary.csv", overwrite=True)
                write_csv(
                    pd.concat(timings, ignore_index=True), folder / "timings.csv", overwrite=True
                )
                if weights:
                    write_csv(pd.DataFrame(weights), folder / "mean_weights.csv", overwrite=True)
                (folder / "table.md").write_text(
                    report(results, args.reference) + weights_table(pd.DataFrame(weights))
                )
    mark_complete(folder)
    logger.info("wrote %s", folder)


def weights_table(weights: pd.DataFrame) -> str:
    """The flow mean and shape weights and the combinator's share in the start that each fit
    chose per condition kind (its inner cross-validation), and whether its start took pooled
    effects; runs made before a column existed show "-" for it."""
    if weights.empty:
        return ""
    lines = [
        "\n### Flow mean and shape weights chosen by cross-validation, per condition kind\n",
        "| screen | split | model | kind | weights over seeds | shape weights over seeds "
        "| combinator shares over seeds | pooled start over seeds | held-out training conditions |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    keys = ["screen", "split", "model", "kind"]
    for key, group in weights.sort_values([*keys, "seed"]).groupby(keys, sort=False):
        chosen = ", ".join(f"{w:g}" for w in group["weight"])
        shaped = ", ".join(f"{w:g}" for w in _column(group, "shape_weight").dropna()) or "-"
        shares = ", ".join(f"{w:g}" for w in _column(group, "combinator_weight").dropna()) or "-"
        pooled = ", ".join(
            "yes" if str(p) == "True" else "no"
            for p in _column(group, "start_pooled")
            if not pd.isna(p)
        )
        held = ", ".join(str(int(n)) for n in group["n_conditions"])
        lines.append(
            f"| {' | '.join(map(str, key))} | {chosen} | {shaped} | {shares} | {pooled or '-'} "
            f"| {held} |"
        )
    return "\n".join(lines) + "\n"


def _column(table: pd.DataFrame, name: str) -> pd.Series:
    """``table[name]``, or an all-missing column where older runs lack it."""
    if name in table:
        return table[name].reset_index(drop=True)
    return pd.Series(np.nan, index=range(len(table)), dtype=float)


def summarize_screens(results: pd.DataFrame) -> pd.DataFrame:
    """:func:`summarize` per screen and split kind."""
    parts = [
        summarize(group.drop(columns=["screen", "split"])).assign(screen=screen, split=kind)
        for (screen, kind), group in results.groupby(["screen", "split"], sort=False)
    ]
    return pd.concat(parts, ignore_index=True)


def report(results: pd.DataFrame, reference: str = "scbig") -> str:
    """The table, acceptance checks and paired differences against ``reference``, per screen
    and split."""
    sections = []
    for (screen, kind), group in results.groupby(["screen", "split"], sort=False):
        group = group.drop(columns=["screen", "split"])
        sections += [
            f"## {screen}, {kind} split ({group['seed'].nunique()} seeds)\n",
            metrics_table(group),
            markdown_acceptance(acceptance(group, kind, reference)),
            markdown_paired(
                paired_differences(group[group["model"].isin(PAIRED)], reference), reference
            ),
        ]
    return "\n".join(sections)


PAIRED_METRICS = ("pearson_delta_de20", "mse_de20", "energy_distance")


def per_seed_means(results: pd.DataFrame) -> pd.Series:
    """Mean over conditions per (subgroup, model, metric, seed)."""
    return results.groupby(["subgroup", "model", "metric", "seed"])["value"].mean()


# A shortfall this small is a tie at the three decimals the tables print.
TIE = 5e-4
LEARNED = (
    "linear",
    "ridge",
    "calibrated_additive",
    "network_additive",
    "combinator",
    "pooled_additive",
)
# Paired against scbig in table.md: its variants and the baselines it can start from.
PAIRED = (
    *VARIANTS,
    "additive",
    "calibrated_additive",
    "network_additive",
    "combinator",
    "pooled_additive",
)


def acceptance(results: pd.DataFrame, kind: str, model: str = "scbig") -> pd.DataFrame:
    """The issue's acceptance checks, on means over seeds of per-seed subgroup means.

    Combo split, ``combo_seen2``: pearson_delta_de20 ≥ 0.95, ≥ the combinator's − 0.01 and above
    linear and ridge; mse_de20 ≤ 0.25 × additive's; energy distance ≤ 0.5 × additive's and below
    every mean-shift model's. Any other split: in every subgroup pearson_delta_de20 at least the
    best learned baseline's (linear, ridge, calibrated_additive, network_additive, combinator).
    """
    seeds = per_seed_means(results)
    means = seeds.groupby(["subgroup", "model", "metric"]).mean()

    def value(subgroup, name, metric):
        return means.get((subgroup, name, metric), float("nan"))

    rows = []

    def check(subgroup, text, ours, reference, holds, margin=float("nan")):
        rows.append(
            {
                "subgroup": subgroup,
                "check": text,
                "scbig": ours,
                "reference": reference,
                "holds": bool(holds),
                "margin": margin,
            }
        )

    for subgroup in sorted(results["subgroup"].unique()):
        if (subgroup, model, "pearson_delta_de20") not in means.index:
            continue
        pearson = value(subgroup, model, "pearson_delta_de20")
        if kind == "combo" and subgroup == "combo_seen2":
            check(subgroup, "pearson_delta_de20 ≥ 0.95", pearson, "0.95", pearson >= 0.95)
            combinator = value(subgroup, "combinator", "pearson_delta_de20")
            check(
                subgroup,
                "pearson_delta_de20 ≥ combinator − 0.01",
                pearson,
                f"combinator {combinator:.3f}",
                pearson >= combinator - 0.01,
            )
            for name in ("linear", "ridge"):
                other = value(subgroup, name, "pearson_delta_de20")
                check(
                    subgroup,
                    f"pearson_delta_de20 above {name}",
                    pearson,
                    f"{name} {other:.3f}",
                    pearson > other,
                )
            mse = value(subgroup, model, "mse_de20")
            additive = value(subgroup, "additive", "mse_de20")
            check(
                subgroup,
                "mse_de20 ≤ 0.25 × additive",
                mse,
                f"additive {additive:.3f}",
                mse <= 0.25 * additive,
            )
            energy = value(subgroup, model, "energy_distance")
            additive = value(subgroup, "additive", "energy_distance")
            check(
                subgroup,
                "energy ≤ 0.5 × additive",
                energy,
                f"additive {additive:.3f}",
                energy <= 0.5 * additive,
            )
            others = {
                name: value(subgroup, name, "energy_distance")
                for name in BASELINES
                if (subgroup, name, "energy_distance") in means.index
            }
            if others:  # a run of scbig variants alone has no mean-shift model to compare
                best = min(others, key=others.get)
                check(
                    subgroup,
                    "energy below every mean-shift model",
                    energy,
                    f"{best} {others[best]:.3f}",
                    energy < others[best],
                )
        elif kind != "combo":
            others = {
                name: value(subgroup, name, "pearson_delta_de20")
                for name in LEARNED
                if (subgroup, name, "pearson_delta_de20") in means.index
            }
            if not others:
                continue
            best = max(others, key=others.get)
            check(
                subgroup,
                "pearson_delta_de20 ≥ best learned baseline",
                pearson,
                f"{best} {others[best]:.3f}",
                pearson >= others[best],
                pearson - others[best],
            )
    return pd.DataFrame(
        rows, columns=["subgroup", "check", "scbig", "reference", "holds", "margin"]
    )


def paired_differences(
    results: pd.DataFrame, reference: str = "scbig", n_boot: int = 2000, seed: int = 0
) -> pd.DataFrame:
    """Each other model minus ``reference``, paired by seed, per subgroup and headline metric.

    Columns: subgroup, model, metric, mean difference, 95% bootstrap CI over seeds, n_seeds.
    """
    seeds = per_seed_means(results[results["metric"].isin(PAIRED_METRICS)])
    rng = np.random.default_rng(seed)
    rows = []
    for (subgroup, metric), block in seeds.groupby(["subgroup", "metric"]):
        table = block.droplevel(["subgroup", "metric"]).unstack("model")  # (seeds, models)
        if reference not in table:
            continue
        for name in table.columns:
            if name == reference:
                continue
            difference = (table[name] - table[reference]).dropna().to_numpy()
            if not len(difference):
                continue
            boot = rng.choice(difference, (n_boot, len(difference))).mean(axis=1)
            rows.append(
                {
                    "subgroup": subgroup,
                    "model": name,
                    "metric": metric,
                    "difference": float(difference.mean()),
                    "ci_low": float(np.quantile(boot, 0.025)),
                    "ci_high": float(np.quantile(boot, 0.975)),
                    "n_seeds": len(difference),
                }
            )
    return pd.DataFrame(
        rows,
        columns=["subgroup", "model", "metric", "difference", "ci_low", "ci_high", "n_seeds"],
    )


def markdown_paired(table: pd.DataFrame, reference: str = "scbig") -> str:
    lines = [
        f"| subgroup | model − {reference} | metric | difference | 95% CI | seeds |",
        "|---|---|---|---|---|---|",
    ]
    for row in table.itertuples():
        lines.append(
            f"| {row.subgroup} | {row.model} | {row.metric} | {row.difference:+.3f} | "
            f"[{row.ci_low:+.3f}, {row.ci_high:+.3f}] | {row.n_seeds} |"
        )
    return "\n".join(lines) + "\n"


def markdown_acceptance(table: pd.DataFrame) -> str:
    lines = ["| subgroup | check | scbig | best reference | holds |", "|---|---|---|---|---|"]
    for row in table.itertuples():
        holds = "yes" if row.holds else "**no**"
        if not row.holds and abs(row.margin) < TIE:
            # Equal at the printed precision: the flow kept none (or little) of its mean change.
            holds += f" (tie: {row.margin:+.5f})"
        lines.append(
            f"| {row.subgroup} | {row.check} | {row.scbig:.3f} | {row.reference} | {holds} |"
        )
    return "\n".join(lines) + "\n"


def _start_pooled(model) -> bool | None:
    """Whether scbig's start took pooled effects for the seen genes (None: no such start)."""
    start = getattr(model, "start_", None)
    additive = getattr(start, "additive", None)
    return None if additive is None else additive.uses_pooled_effects


if __name__ == "__main__":
    main()
