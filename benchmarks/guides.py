"""Guide-level prediction on papalexi21_thp1: held-out guides of seen genes.

Per split seed (``unseen_guide``: a quarter of each gene's guides held out, the gene kept
through its other guides), every guide-level model is fitted on the guide conditions and
predicts each held-out guide. Against that, the *gene-level* prediction of the same gene: the
model fitted on gene conditions made of the remaining guides' cells (the held-out guides' cells
removed), its prediction for the gene relabelled as the guide. Both are scored against the
held-out guide's own cells with the same DE genes, so the difference, paired over guides, says
whether guide identity adds anything beyond the gene.

Writes ``results.csv``, ``table.md`` and ``command.txt`` into ``--out``.

Run: ``.venv/bin/python benchmarks/guides.py --out runs/guides``
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from perturbflow.data import CONDITION_COLUMN, read
from perturbflow.data.datasets import DATASETS, data_dir
from perturbflow.data.outputs import mark_complete, prepare_output_dir
from perturbflow.data.splits import Split
from perturbflow.eval.de import de_genes
from perturbflow.eval.evaluate import evaluate
from perturbflow.eval.loop import RunSpec, fit_model, model_runs, run

logger = logging.getLogger("guides")

GENE_MODELS = ("additive", "calibrated_additive")
METRICS = ("pearson_delta_de20", "mse_de20", "discrimination_l1")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/guides"))
    parser.add_argument("--seeds", default="1,2,3,4,5")
    parser.add_argument("--models", default="additive,calibrated_additive,linear,ridge")
    parser.add_argument("--min-cells", type=int, default=10, help="guides with fewer are dropped")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    folder = prepare_output_dir(args.out, overwrite=args.overwrite)
    (folder / "command.txt").write_text(
        ".venv/bin/python benchmarks/guides.py " + " ".join(sys.argv[1:]) + "\n"
    )
    spec = DATASETS["papalexi21_thp1"]
    data = data_dir()
    if data is None:
        parser.error("no data folder: set PERTURBFLOW_DATA_DIR")
    raw = ad.read_h5ad(data / spec.local_path)
    options = dict(condition_key=spec.condition_key, control=spec.control)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        guides = read(raw, guide_key="grna_top", **options)
    counts = guides.cells_per_condition
    guides = guides.subset([name for name in guides.conditions if counts[name] >= args.min_cells])
    frames = []
    with tempfile.TemporaryDirectory() as tmp:
        result = run(guides, "unseen_guide", model_runs(args.models), seeds, out=Path(tmp))
    guide_level = result.results.assign(level="guide")
    frames.append(guide_level[guide_level["subgroup"] == "unseen_guide"])
    for seed in seeds:
        split = result.splits[seed]
        frames.append(gene_level(raw, options, guides, split, seed))
    results = pd.concat(frames, ignore_index=True)
    results = results[results["metric"].isin(METRICS)]
    results.to_csv(folder / "results.csv", index=False)
    (folder / "table.md").write_text(table(results, guides, seeds))
    mark_complete(folder)
    logger.info("wrote %s", folder / "table.md")


def gene_level(raw: ad.AnnData, options: dict, guides, split: Split, seed: int) -> pd.DataFrame:
    """Gene-level models fitted without the held-out guides' cells, scored on those guides."""
    keep = ~raw.obs["grna_top"].astype(str).isin(split.test).to_numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        genes = read(raw[keep].copy(), **options)
    train = Split(kind="gene_level", seed=seed, train=tuple(genes.conditions), val=(), test=())
    guide_gene = guides.guide_genes
    de = de_genes(guides, list(split.test))
    frames = []
    for name in GENE_MODELS:
        model = fit_model(RunSpec(name, name), genes, train, seed)
        targets = sorted({guide_gene[g] for g in split.test})
        predicted = model.predict(targets, n_cells=100, seed=seed)
        blocks = []
        for guide in split.test:
            cells = predicted[predicted.obs[CONDITION_COLUMN] == guide_gene[guide]].copy()
            cells.obs[CONDITION_COLUMN] = guide
            cells.obs_names = [f"{guide}_{i}" for i in range(cells.n_obs)]
            blocks.append(cells)
        relabelled = ad.concat(blocks)
        relabelled.uns["perturbflow"] = {"model": f"{name} (gene level)"}
        scored = evaluate(relabelled, guides, split, model=f"{name} (gene level)", seed=seed, de=de)
        frames.append(scored.assign(level="gene"))
    return pd.concat(frames, ignore_index=True)


def table(results: pd.DataFrame, guides, seeds: list[int]) -> str:
    """Mean per model and metric; paired differences guide-level − gene-level per guide."""
    means = results.groupby(["model", "metric"])["value"].mean().unstack("metric")
    lines = [
        f"`papalexi21_thp1` at guide level ({len(guides.conditions) - 1} guides with ≥ 10 cells), "
        f"`unseen_guide` split, seeds {', '.join(map(str, seeds))}; held-out guides only. "
        "`(gene level)` rows: the model fitted on gene conditions without the held-out guides' "
        "cells, predicting the guide's gene.",
        "",
        "| model | " + " | ".join(METRICS) + " |",
        "|---|" + "---|" * len(METRICS),
    ]
    for model, row in means.iterrows():
        lines.append(f"| {model} | " + " | ".join(f"{row[m]:.3f}" for m in METRICS) + " |")
    rng = np.random.default_rng(0)
    lines += [
        "",
        "Paired over (seed, held-out guide), guide level − gene level of the same model:",
        "",
    ]
    keyed = results.set_index(["model", "metric", "seed", "condition"])["value"].sort_index()
    for name in GENE_MODELS:
        for metric in ("pearson_delta_de20", "mse_de20"):
            diff = (
                keyed.loc[(name, metric)] - keyed.loc[(f"{name} (gene level)", metric)]
            ).dropna()
            boots = rng.choice(diff.to_numpy(), (2000, len(diff))).mean(axis=1)
            low, high = np.percentile(boots, [2.5, 97.5])
            better = (diff > 0).sum() if metric.startswith("pearson") else (diff < 0).sum()
            lines.append(
                f"- {name}, {metric}: {diff.mean():+.3f} [{low:+.3f}, {high:+.3f}] "
                f"(guide level better for {int(better)} of {len(diff)} guides)"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
