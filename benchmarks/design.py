"""Simulated rounds of experiments: does `perturbflow design` pick doubles that teach more?

On each GRN screen, 30 % of the doubles are a fixed test set, never measured. The rest is the
pool. Both strategies start from every single and 10 % of the doubles (the same draw), then add
10 % of the doubles per round from the pool: ``ranked`` takes the pool's best
``perturbflow.eval.design.rank_pairs`` scores (combinator ensemble of 2 bootstrap members),
``random`` a seeded random draw. After each round a combinator fitted on the measured
conditions predicts the test doubles; ``pearson_delta_de20`` and ``mse_de20`` are recorded
against the number of measured doubles. The question: does the ranked strategy reach the random
strategy's final accuracy with at most 70 % of its doubles?

Writes ``results.csv``, ``table.md``, ``rounds.png`` and ``command.txt`` into ``--out``.

Run: ``.venv/bin/python benchmarks/design.py --out runs/design``
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from perturbflow.data import read
from perturbflow.data.conditions import CONTROL_NAME, parse_condition
from perturbflow.data.outputs import mark_complete, prepare_output_dir
from perturbflow.data.splits import Split
from perturbflow.eval.de import de_genes
from perturbflow.eval.design import rank_pairs
from perturbflow.eval.evaluate import evaluate
from perturbflow.eval.loop import RunSpec, fit_model

logger = logging.getLogger("design")

SCREENS = (
    "runs/screens/grnsim_dorothea_s2.h5ad",
    "runs/screens/grnsim_collectri_s3.h5ad",
    "runs/screens/grnsim_collectri_s1_fresh.h5ad",
)
METRICS = ("pearson_delta_de20", "mse_de20")


def rounds(dataset, seed: int, args) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    doubles = sorted(n for n in dataset.conditions if len(parse_condition(n)) == 2)
    singles = [n for n in dataset.conditions if len(parse_condition(n)) == 1]
    order = list(rng.permutation(doubles))
    n_test = round(0.3 * len(doubles))
    test, pool = sorted(order[:n_test]), order[n_test:]
    step = max(1, round(0.1 * len(doubles)))
    start = pool[:step]
    split = Split(
        kind="design_test",
        seed=seed,
        train=(CONTROL_NAME, *singles, *pool),
        val=(),
        test=tuple(test),
        subgroups=dict.fromkeys(test, "combo_test"),
    )
    de = de_genes(dataset, test)
    frames = []
    for strategy in ("ranked", "random"):
        measured = list(start)
        remaining = [n for n in pool if n not in measured]
        picker = np.random.default_rng(seed + 1)
        while True:
            frames.append(score(dataset, singles, measured, split, de, seed, strategy))
            if not remaining:
                break
            if strategy == "random":
                chosen = list(picker.choice(remaining, min(step, len(remaining)), replace=False))
            else:
                current = dataset.subset([CONTROL_NAME, *singles, *measured])
                table = rank_pairs(
                    current,
                    RunSpec("combinator", "combinator"),
                    candidates=remaining,
                    seeds=(seed, seed + 100),
                    kappa=args.kappa,
                )
                chosen = list(table["condition"].head(step))
            measured += chosen
            remaining = [n for n in remaining if n not in chosen]
            logger.info("%s seed %d: %d doubles measured", strategy, seed, len(measured))
    return pd.concat(frames, ignore_index=True)


def score(dataset, singles, measured, split, de, seed, strategy) -> pd.DataFrame:
    train = Split(
        kind="design_round", seed=seed, train=(CONTROL_NAME, *singles, *measured), val=(), test=()
    )
    model = fit_model(RunSpec("combinator", "combinator"), dataset, train, seed)
    predicted = model.predict(list(split.test), n_cells=100, seed=seed)
    results = evaluate(predicted, dataset, split, model="combinator", seed=seed, de=de)
    results = results[results["metric"].isin(METRICS)]
    per_metric = results.groupby("metric")["value"].mean()
    return pd.DataFrame(
        [
            {
                "strategy": strategy,
                "seed": seed,
                "n_doubles": len(measured),
                "metric": metric,
                "value": float(value),
            }
            for metric, value in per_metric.items()
        ]
    )


def table(results: pd.DataFrame) -> str:
    """Mean over (screen, seed) per round; how many doubles ranked needs to reach random's
    final pearson_delta_de20, per (screen, seed)."""
    means = results.groupby(["metric", "strategy", "round"])["value"].mean().unstack("strategy")
    lines = [
        "Mean over screens and seeds of the test doubles' mean metric, by round (round 0: the",
        "singles and 10 % of the doubles; each round adds 10 % of the doubles).",
        "",
        "| metric | round | ranked | random |",
        "|---|---|---|---|",
    ]
    for (metric, round_), row in means.iterrows():
        lines.append(f"| {metric} | {round_} | {row['ranked']:.3f} | {row['random']:.3f} |")
    fractions = []
    pearson = results[results["metric"] == "pearson_delta_de20"]
    for _, group in pearson.groupby(["screen", "seed"]):
        random = group[group["strategy"] == "random"].sort_values("n_doubles")
        ranked = group[group["strategy"] == "ranked"].sort_values("n_doubles")
        goal, spent = random["value"].iloc[-1], random["n_doubles"].iloc[-1]
        reached = ranked[ranked["value"] >= goal]
        needed = reached["n_doubles"].iloc[0] if len(reached) else np.nan
        fractions.append(needed / spent)
    fractions = np.asarray(fractions, dtype=float)
    reached = np.isfinite(fractions)
    lines += [
        "",
        f"Ranked selection reached random's final pearson_delta_de20 in {int(reached.sum())} of "
        f"{len(fractions)} (screen, seed) runs, using "
        + (
            f"{np.nanmedian(fractions):.0%} (median; range {np.nanmin(fractions):.0%}–"
            f"{np.nanmax(fractions):.0%}) of random's doubles"
            if reached.any()
            else "—"
        )
        + f"; the target was ≤ 70 %: {'met' if reached.all() and np.nanmax(fractions) <= 0.7 else 'not met'}.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/design"))
    parser.add_argument("--screens", nargs="*", type=Path, default=[Path(s) for s in SCREENS])
    parser.add_argument("--seeds", default="1,2")
    parser.add_argument("--kappa", type=float, default=1.0)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    folder = prepare_output_dir(args.out, overwrite=args.overwrite)
    (folder / "command.txt").write_text(
        ".venv/bin/python benchmarks/design.py " + " ".join(sys.argv[1:]) + "\n"
    )
    frames = []
    for path in args.screens:
        dataset = read(path)
        for seed in (int(s) for s in args.seeds.split(",")):
            frame = rounds(dataset, seed, args).assign(screen=path.stem)
            frame["round"] = frame.groupby(["strategy", "metric"]).cumcount()
            frames.append(frame)
            results = pd.concat(frames, ignore_index=True)
            results.to_csv(folder / "results.csv", index=False)
    (folder / "table.md").write_text(table(results))
    plot(results, folder / "rounds.png")
    mark_complete(folder)
    logger.info("wrote %s", folder / "table.md")


def plot(results: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METRICS), figsize=(9, 3.5))
    for axis, metric in zip(axes, METRICS, strict=True):
        part = results[results["metric"] == metric]
        for strategy, group in part.groupby("strategy"):
            curve = group.groupby("round")["value"].agg(["mean", "std"])
            axis.errorbar(curve.index, curve["mean"], yerr=curve["std"], label=strategy, capsize=3)
        axis.set_xlabel("round (10 % of the doubles each)")
        axis.set_title(metric)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
