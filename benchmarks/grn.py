"""How well perturbflow's networks recover known regulation, on screens with a known answer and on
real screens against curated regulons.

Parts (``--parts``, comma-separated):

- ``screen``: on each GRN screen, edges from its knock-outs (``screen``; ``screen_direct`` after
  transitive reduction; ``regression``: direct effects from every condition jointly),
  GRNBoost2-style trees (``tree``) and correlation (``correlation``) over the same perturbed
  regulators, scored against the screen's true network.
- ``insilico``: per split seed, the regulators of an ``unseen_single`` split are held out of the
  fit; each model's in-silico perturbation of them (``predict_delta``) is scored against their
  true targets, next to correlation edges of the same regulators.
- ``completion``: per seed, 20 % of the true network's edges are held out and predicted by graph
  attention over the rest, with gene features from the encoder (``encoder``), expression
  statistics (``expression``) and, with ``--priors``, a prior table (``prior:go``).
- ``real``: on real screens, knock-out (or CRISPRa) edges against CollecTRI and DoRothEA
  (confidence A–C) restricted to the measured genes, with an EPR permutation p-value.

Writes ``results.csv`` (part, dataset, method, seed, regulator, metric, value), ``table.md``
(means over seeds and the acceptance checks), ``command.txt``.

Run: ``.venv/bin/python benchmarks/grn.py --out runs/grn --screens runs/screens/a.h5ad,…``
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from perturbflow.data import read
from perturbflow.data.conditions import parse_condition
from perturbflow.data.datasets import DATASETS, load_dataset
from perturbflow.data.outputs import mark_complete, prepare_output_dir, write_csv
from perturbflow.data.splits import make_split
from perturbflow.eval.loop import RunSpec, run
from perturbflow.grn.expression import correlation_edges, tree_edges
from perturbflow.grn.metrics import epr_permutation_pvalue, score_edges
from perturbflow.grn.network import read_network
from perturbflow.grn.screen import (
    model_edges,
    regression_edges,
    screen_edges,
    transitive_reduction,
)

logger = logging.getLogger("grn")

PARTS = ("screen", "insilico", "completion", "real")
SCREEN_METHODS = ("screen", "screen_direct", "regression")
GAIN_TYPES = ("CRISPRa",)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/grn"))
    parser.add_argument("--screens", default="", help="comma-separated GRN screen .h5ad paths")
    parser.add_argument("--real", default="papalexi21_thp1,norman19_subset")
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--seeds", default="1,2,3,4,5", help="split / completion seeds")
    parser.add_argument("--models", default="ridge,calibrated_additive", help="in-silico models")
    parser.add_argument("--tree-cells", type=int, default=3000, help="cells the trees see")
    parser.add_argument(
        "--encoder-readouts",
        default="",
        help="completion: encoder readouts besides the default (FeatureConfig.encoder_readout), "
        "each a method gat_encoder_<readout>",
    )
    parser.add_argument("--permutations", type=int, default=1000)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("lightning", "lightning.pytorch", "perturbflow.models.baselines"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown part(s) {unknown}; choose from {PARTS}")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    folder = prepare_output_dir(args.out, overwrite=args.overwrite)
    (folder / "command.txt").write_text(
        " ".join([".venv/bin/python benchmarks/grn.py", *sys.argv[1:]]) + "\n"
    )
    screens = [Path(s.strip()) for s in args.screens.split(",") if s.strip()]
    frames: list[pd.DataFrame] = []

    def save() -> None:
        results = pd.concat(frames, ignore_index=True)
        write_csv(results, folder / "results.csv", overwrite=True)
        (folder / "table.md").write_text(report(results))

    for path in screens:
        dataset = read(path)
        name = path.stem
        truth = read_network(dataset, genes=list(dataset.genes))
        if "screen" in parts:
            frames.append(screen_part(dataset, truth, name, args.tree_cells))
            save()
        if "insilico" in parts:
            models = [m.strip() for m in args.models.split(",") if m.strip()]
            frames.append(insilico_part(dataset, truth, name, seeds, models))
            save()
        if "completion" in parts:
            readouts = [r.strip() for r in args.encoder_readouts.split(",") if r.strip()]
            frames.append(completion_part(dataset, truth, name, seeds, readouts))
            save()
    if "real" in parts:
        for name in [r.strip() for r in args.real.split(",") if r.strip()]:
            frames.append(real_part(name, args.permutations))
            save()
    mark_complete(folder)
    logger.info("wrote %s", folder)


def _rows(table: pd.DataFrame, **columns) -> pd.DataFrame:
    return table.assign(**columns)


def screen_part(dataset, truth, name: str, tree_cells: int) -> pd.DataFrame:
    """Knock-out, reduced, tree and correlation edges of the perturbed regulators."""
    genes = list(dataset.genes)
    started = time.perf_counter()
    knockouts = screen_edges(dataset)
    regulators = sorted(set(knockouts["source"]))
    direct = transitive_reduction(knockouts)
    direct = direct[~direct["indirect"]]
    cells = dataset.expression(list(dataset.conditions))  # (N, G) log-normalised
    rng = np.random.default_rng(0)
    expression = cells[np.sort(rng.choice(len(cells), min(tree_cells, len(cells)), replace=False))]
    methods = {
        "screen": knockouts,
        "screen_direct": direct,
        "regression": regression_edges(dataset),
        "tree": tree_edges(expression, genes, regulators, seed=0),
        "correlation": correlation_edges(expression, genes, regulators),
    }
    logger.info("%s: screen part in %.0f s", name, time.perf_counter() - started)
    return pd.concat(
        [
            _rows(
                score_edges(edges, truth, genes=genes, regulators=regulators, method=method),
                part="screen",
                dataset=name,
                seed=0,
            )
            for method, edges in methods.items()
        ],
        ignore_index=True,
    )


def insilico_part(dataset, truth, name: str, seeds: list[int], models: list[str]) -> pd.DataFrame:
    """Edges of regulators held out of the fit, from each model's in-silico perturbation."""
    genes = list(dataset.genes)
    frames = []
    for seed in seeds:
        split = make_split("unseen_single", dataset.conditions, seed=seed)
        held_out = sorted(
            {g for c in split.test if len(parse_condition(c)) == 1 for g in parse_condition(c)}
            & set(truth["source"])
            & set(genes)
        )
        if not held_out:
            continue
        # Correlation over the training cells only: the held-out conditions are not seen.
        cells = dataset.expression([c for c in dataset.conditions if c not in set(split.test)])
        methods = {"correlation": correlation_edges(cells, genes, held_out)}

        # The same models scored beyond the response every training single shares.
        background = sorted(c for c in split.train if len(parse_condition(c)) == 1)

        def in_silico(
            spec, replicate, model, held_out=held_out, methods=methods, background=background
        ):
            methods[spec.label] = model_edges(model, held_out)
            methods[f"{spec.label}_specific"] = model_edges(model, held_out, background=background)

        # The run loop fits each model on the same unseen_single split (seed) and hands it over.
        run(
            dataset,
            "unseen_single",
            [RunSpec(m, m) for m in models],
            [seed],
            score=False,
            on_fitted=in_silico,
        )
        for method, edges in methods.items():
            frames.append(
                _rows(
                    score_edges(edges, truth, genes=genes, regulators=held_out, method=method),
                    part="insilico",
                    dataset=name,
                    seed=seed,
                )
            )
    return pd.concat(frames, ignore_index=True)


def completion_part(
    dataset, truth, name: str, seeds: list[int], readouts: list[str] = ()
) -> pd.DataFrame:
    """Held-out true edges predicted by graph attention, per feature kind and seed; the encoder's
    default readout is ``gat_encoder``, each other one in ``readouts`` ``gat_encoder_<readout>``."""
    from perturbflow.grn.completion import (
        CompletionConfig,
        FeatureConfig,
        complete_network,
        gene_features,
    )

    genes = list(dataset.genes)
    rows = []
    features = {
        kind: gene_features(kind, dataset, genes=genes) for kind in ("encoder", "expression")
    }
    for readout in dict.fromkeys(readouts):
        if readout != FeatureConfig().encoder_readout:
            config = FeatureConfig(encoder_readout=readout)
            features[f"encoder_{readout}"] = gene_features(
                "encoder", dataset, genes=genes, config=config
            )
    for seed in seeds:
        for kind, table in features.items():
            result = complete_network(truth, table, CompletionConfig(seed=seed))
            rows += [
                {"method": f"gat_{kind}", "regulator": "all", "metric": m, "value": v, "seed": seed}
                for m, v in (("auroc", result.auroc), ("auprc", result.auprc))
            ]
    return pd.DataFrame(rows).assign(part="completion", dataset=name)


def real_part(name: str, permutations: int) -> pd.DataFrame:
    """Screen edges of a real dataset against curated regulons of its perturbed regulators.

    A CRISPRa or CRISPRi target need not be measured, so every single-gene perturbation is a
    regulator and the reference keeps its edges to measured targets.
    """
    dataset = load_dataset(name)
    genes = list(dataset.genes)
    perturbation = "gain" if DATASETS[name].perturbation_type in GAIN_TYPES else "loss"
    singles = sorted(
        {g for c in dataset.conditions if len(parse_condition(c)) == 1 for g in parse_condition(c)}
    )
    edges = screen_edges(dataset, regulators=singles, perturbation=perturbation)
    frames = []
    for reference in ("collectri", "dorothea"):
        network = read_network(reference)
        truth = network[network["target"].isin(genes)]
        regulators = sorted(set(edges["source"]) & set(truth["source"]))
        if not regulators:
            logger.warning("%s: no perturbed regulator has %s targets", name, reference)
            continue
        method = f"screen_vs_{reference}"
        scored = score_edges(edges, truth, genes=genes, regulators=regulators, method=method)
        p = epr_permutation_pvalue(
            edges, truth, genes=genes, regulators=regulators, n_permutations=permutations
        )
        extra = {"method": method, "regulator": "all", "metric": "epr_pvalue", "value": p}
        frames.append(pd.concat([scored, pd.DataFrame([extra])], ignore_index=True))
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames, ignore_index=True).assign(part="real", dataset=name, seed=0)


def report(results: pd.DataFrame) -> str:
    """Overall metrics per part, dataset and method (mean ± sd over seeds), then the checks."""
    overall = results[results["regulator"] == "all"]
    shown = ("auprc", "auprc_ratio", "auroc", "epr", "epr_pvalue", "n_true", "n_candidates")
    lines = []
    for part, group in overall.groupby("part", sort=False):
        metrics = [m for m in shown if m in set(group["metric"])]
        lines += [f"### {part}\n", "| dataset | method | " + " | ".join(metrics) + " |"]
        lines.append("|---|---|" + "---|" * len(metrics))
        stats = group.groupby(["dataset", "method", "metric"], sort=False)["value"].agg(
            ["mean", "std", "count"]
        )
        for dataset, method in stats.index.droplevel("metric").unique():
            cells = []
            for metric in metrics:
                if (dataset, method, metric) not in stats.index:
                    cells.append("")
                    continue
                mean, sd, n = stats.loc[(dataset, method, metric)]
                cells.append(f"{mean:.3g} ± {sd:.2g}" if n > 1 else f"{mean:.3g}")
            lines.append(f"| {dataset} | {method} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["### acceptance\n", acceptance(overall)]
    return "\n".join(lines)


def acceptance(overall: pd.DataFrame) -> str:
    """The issue's checks that these parts can decide, one line each."""

    def mean(part, dataset, method, metric):
        values = overall.query(
            "part == @part and dataset == @dataset and method == @method and metric == @metric"
        )["value"]
        return float(values.mean()) if len(values) else float("nan")

    lines = []
    for dataset in overall.loc[overall["part"] == "screen", "dataset"].unique():
        # The best screen-derived method against the better co-expression method.
        derived = {m: mean("screen", dataset, m, "auprc") for m in SCREEN_METHODS}
        best = max(derived, key=lambda m: derived[m])
        ratio = mean("screen", dataset, best, "auprc_ratio")
        epr = mean("screen", dataset, best, "epr")
        tree = mean("screen", dataset, "tree", "auprc")
        corr = mean("screen", dataset, "correlation", "auprc")
        density = mean("screen", dataset, best, "n_true") / mean(
            "screen", dataset, best, "n_candidates"
        )
        ok = ratio >= 5 and epr >= 5 and derived[best] > max(tree, corr)
        lines.append(
            f"- {dataset}: best screen-derived edges ({best}) AUPRC {derived[best]:.3f}, ratio "
            f"{ratio:.1f} (at most {1 / density:.1f} at this density), EPR {epr:.1f}; tree "
            f"{tree:.3f}, correlation {corr:.3f}: {'holds' if ok else 'fails'}"
        )
    for (dataset, method), group in overall[overall["part"] == "insilico"].groupby(
        ["dataset", "method"], sort=False
    ):
        ratio = group.loc[group["metric"] == "auprc_ratio", "value"].mean()
        lines.append(
            f"- {dataset} in-silico {method}: AUPRC ratio {ratio:.2f} "
            f"({'holds' if ratio >= 2 else 'fails'} ≥ 2)"
        )
    completion = overall[overall["part"] == "completion"]
    for dataset, group in completion.groupby("dataset", sort=False):
        auroc = group[group["metric"] == "auroc"].pivot_table(
            index="seed", columns="method", values="value"
        )
        if {"gat_encoder", "gat_expression"} <= set(auroc.columns):
            diff = auroc["gat_encoder"] - auroc["gat_expression"]
            low, high = _bootstrap_ci(diff.to_numpy())
            lines.append(
                f"- {dataset} completion: AUROC encoder {auroc['gat_encoder'].mean():.3f}, "
                f"expression {auroc['gat_expression'].mean():.3f}; encoder − expression "
                f"{diff.mean():+.3f} (95% CI {low:+.3f} to {high:+.3f}, {len(diff)} seeds)"
            )
        for other in sorted(c for c in auroc.columns if c.startswith("gat_encoder_")):
            diff = auroc[other] - auroc["gat_encoder"]
            low, high = _bootstrap_ci(diff.to_numpy())
            lines.append(
                f"- {dataset} completion: AUROC {other} {auroc[other].mean():.3f}; minus the "
                f"default readout {diff.mean():+.3f} (95% CI {low:+.3f} to {high:+.3f}, "
                f"{len(diff)} seeds)"
            )
    return "\n".join(lines) + "\n"


def _bootstrap_ci(values: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = rng.choice(values, (n, len(values)), replace=True).mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


if __name__ == "__main__":
    main()
