"""How biologically meaningful the GRC gene programs are, per embedding and relation source.

For each real dataset, programs are learned on the training cells (control + training
conditions) of the dataset's default split (seed ``--split-seed``), with the number of programs
scbig uses (``min(32, n_genes // 2)``), by five variants:

- ``data_knn``: correlation embedding + co-expression kNN graph (scbig's default);
- ``random``: balanced random programs (the "no GRC" ablation);
- ``go_string`` / ``ppi_string`` / ``data_string``: the ``go``, ``ppi`` or data embedding with
  the STRING (score >= 700) graph as the relation graph.

A prior embedding covers only some genes; each uncovered gene gets the mean of the unit prior
vectors of the ``--fill-k`` covered genes it is most (absolutely) correlated with in the data
embedding, so it lands near its co-expression partners rather than at one shared point.

Each variant is scored by co-expression coherence on the training cells, Reactome and GO-BP
(Enrichr 2023) over-representation (hypergeometric, BH over all program × set tests, universe =
the dataset's genes that the library annotates) and STRING within-program edge density against 100 label shuffles. STRING
density is circular for the ``*_string`` variants (the graph built them) and GO-BP is partly
circular for ``go_string`` (GO built its embedding); the table says so. Writes:

- ``results.csv``: long format (dataset, variant, metric, value)
- ``top_terms.csv``: each program's best Reactome and GO-BP set (FDR, overlap, genes)
- ``table.md``: the README table

Run: ``.venv/bin/python benchmarks/program_quality.py --out runs/program_quality``
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from perturbflow.data import CONTROL_NAME
from perturbflow.data.datasets import dataset_spec, load_dataset
from perturbflow.data.outputs import mark_complete, prepare_output_dir, write_csv
from perturbflow.data.splits import make_split
from perturbflow.programs import (
    GRCConfig,
    PriorBundle,
    adjacency_from_edges,
    coexpression_knn_graph,
    correlation_embedding,
    gene_embedding,
    gene_relation_clustering,
    random_programs,
)
from perturbflow.programs.priors import as_relation_edges, harmonise_symbols, harmonise_table
from perturbflow.programs.quality import enrichment_summary, ppi_edge_density, program_enrichment

logger = logging.getLogger("program_quality")

DATASETS = ("norman19_subset", "papalexi21_thp1")
# variant: (embedding source, relation graph); None embedding means random programs
VARIANTS = {
    "data_knn": ("data", "coexpression"),
    "random": (None, None),
    "go_string": ("go", "string"),
    "ppi_string": ("ppi", "string"),
    "data_string": ("data", "string"),
}
LIBRARIES = {"reactome": "reactome", "go_bp": "go_bp"}  # label: PriorBundle gene-set name
EMBEDDING_COMPONENTS = 32  # ScBIGConfig.embedding_components
KNN = 10  # ScBIGConfig.knn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/program_quality"))
    parser.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated")
    parser.add_argument("--n-programs", type=int, default=32, help="capped at n_genes // 2")
    parser.add_argument("--seed", type=int, default=0, help="GRC / random-program seed")
    parser.add_argument("--split-seed", type=int, default=1, help="seed of the training split")
    parser.add_argument("--fill-k", type=int, default=10, help="neighbours for uncovered genes")
    parser.add_argument("--n-shuffles", type=int, default=100, help="STRING density shuffles")
    parser.add_argument("--alpha", type=float, default=0.05, help="FDR threshold")
    parser.add_argument("--priors", type=Path, default=None, help="data or priors folder")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    variants = _names(parser, args.variants, VARIANTS, "variant")
    datasets = _names(parser, args.datasets, DATASETS, "dataset")
    folder = prepare_output_dir(args.out, overwrite=args.overwrite)
    (folder / "command.txt").write_text(
        " ".join([".venv/bin/python benchmarks/program_quality.py", *sys.argv[1:]]) + "\n"
    )
    bundle = PriorBundle.discover(args.priors)
    started = time.perf_counter()
    rows, top_terms = [], []
    for name in datasets:
        dataset_rows, dataset_terms = evaluate_dataset(name, variants, bundle, args)
        rows += dataset_rows
        top_terms += dataset_terms
        results = pd.DataFrame(rows, columns=["dataset", "variant", "metric", "value"])
        # Written after every dataset so an interrupted run keeps what it finished.
        write_csv(results, folder / "results.csv", overwrite=True)
        write_csv(pd.concat(top_terms, ignore_index=True), folder / "top_terms.csv", overwrite=True)
        (folder / "table.md").write_text(markdown_table(results, args.alpha))
    mark_complete(folder)
    logger.info("wrote %s in %.1f s", folder, time.perf_counter() - started)


def evaluate_dataset(
    name: str, variants: list[str], bundle: PriorBundle, args: argparse.Namespace
) -> tuple[list[tuple[str, str, str, float]], list[pd.DataFrame]]:
    """Learn and score every variant's programs on one dataset's training cells."""
    dataset = load_dataset(name)
    split = make_split(dataset_spec(name).default_split, dataset.conditions, seed=args.split_seed)
    train = [c for c in split.train if c in set(dataset.conditions) and c != CONTROL_NAME]
    train_cells = dataset.expression([CONTROL_NAME, *train])  # (N, G)
    genes = [str(gene) for gene in dataset.genes]
    n_programs = min(args.n_programs, max(1, len(genes) // 2))  # as scbig's _learn_programs
    logger.info(
        "%s: %d training cells (%d conditions + control) × %d genes, %d programs",
        name,
        len(train_cells),
        len(train),
        len(genes),
        n_programs,
    )
    gene_info = bundle.gene_info_or_none()
    string_edges, _ = harmonise_table(
        bundle.load_ppi(), genes, columns=("source", "target"), gene_info=gene_info, source="STRING"
    )
    string = adjacency_from_edges(as_relation_edges(string_edges), genes)  # (G, G)
    libraries = {
        label: _harmonised_sets(bundle.load_gene_sets(set_name), genes, gene_info)
        for label, set_name in LIBRARIES.items()
    }
    # The annotated background: genes the library knows nothing about cannot be enriched.
    backgrounds = {label: _annotated(genes, sets) for label, sets in libraries.items()}
    data_embedding = correlation_embedding(train_cells, pd.Index(genes), EMBEDDING_COMPONENTS)

    rows: list[tuple[str, str, str, float]] = [
        (name, "-", "n_genes", len(genes)),
        (name, "-", "n_train_cells", len(train_cells)),
        (name, "-", "n_programs", n_programs),
        (name, "-", "string_edges", string.nnz // 2),
        (name, "-", "string_gene_coverage", float((string.getnnz(axis=1) > 0).mean())),
    ]
    rows += [
        (name, "-", f"{label}_universe_size", len(genes)) for label, genes in backgrounds.items()
    ]
    terms = []
    for variant in variants:
        source, relation = VARIANTS[variant]
        start = time.perf_counter()
        if source is None:
            programs = random_programs(genes, n_programs, seed=args.seed)
            coverage = float("nan")
        else:
            embedding, coverage = _embedding(
                source, bundle, genes, data_embedding, train_cells, args.fill_k
            )
            graph = (
                coexpression_knn_graph(train_cells, genes, k=KNN)
                if relation == "coexpression"
                else string
            )
            programs = gene_relation_clustering(
                embedding, graph, GRCConfig(n_clusters=n_programs, seed=args.seed), genes=genes
            )
        learned = time.perf_counter() - start
        metrics = {"embedding_coverage": coverage, "learn_s": learned}
        metrics["coherence"] = programs.coherence(train_cells)
        density = ppi_edge_density(programs, string, n_shuffles=args.n_shuffles, seed=args.seed)
        metrics |= {f"string_{key}": density[key] for key in ("ratio", "z_score", "p_value")}
        metrics["string_density_within"] = density["density_within"]
        metrics["string_density_shuffled"] = density["density_shuffled_mean"]
        for label, gene_sets in libraries.items():
            table = program_enrichment(programs, gene_sets, universe=backgrounds[label])
            summary = enrichment_summary(table, alpha=args.alpha)
            metrics |= {f"{label}_{key}": value for key, value in summary.items()}
            terms.append(_best_terms(table, name, variant, label))
        logger.info(
            "%s %s: coherence %.3f, STRING ratio %.2f, Reactome %d/%d, GO-BP %d/%d programs "
            "enriched (%.1f s)",
            name,
            variant,
            metrics["coherence"],
            metrics["string_ratio"],
            metrics["reactome_n_enriched_programs"],
            n_programs,
            metrics["go_bp_n_enriched_programs"],
            n_programs,
            time.perf_counter() - start,
        )
        rows += [(name, variant, metric, float(value)) for metric, value in metrics.items()]
    return rows, terms


def _embedding(
    source: str,
    bundle: PriorBundle,
    genes: list[str],
    data_embedding: pd.DataFrame,
    train_cells: np.ndarray,
    fill_k: int,
) -> tuple[pd.DataFrame, float]:
    """A ``(G, d)`` embedding of every gene and the fraction the source itself covers."""
    if source == "data":
        return data_embedding, 1.0
    prior = gene_embedding(source, bundle, genes=genes)  # covered genes only
    filled = fill_uncovered(prior, data_embedding, fill_k)
    coverage = len(prior) / len(genes)
    logger.info(
        "%s embedding covers %d/%d genes (%.0f%%); %d filled from their %d nearest covered "
        "genes in the data embedding",
        source,
        len(prior),
        len(genes),
        100 * coverage,
        len(genes) - len(prior),
        fill_k,
    )
    return filled, coverage


def fill_uncovered(prior: pd.DataFrame, data_embedding: pd.DataFrame, k: int) -> pd.DataFrame:
    """Prior vectors for every gene of ``data_embedding``: an uncovered gene gets the mean unit
    prior vector of the ``k`` covered genes with the largest absolute cosine similarity to it in
    the data embedding (the mean of all covered genes when it correlates with none)."""
    genes = data_embedding.index
    prior_unit = _unit(prior.to_numpy(np.float64))  # (C, d)
    data_unit = _unit(data_embedding.to_numpy(np.float64))  # (G, e)
    covered = genes.get_indexer(prior.index)  # (C,) positions of covered genes
    missing = np.setdiff1d(np.arange(len(genes)), covered)  # (M,)
    filled = np.zeros((len(genes), prior.shape[1]))  # (G, d)
    filled[covered] = prior_unit
    if len(missing):
        similarity = np.abs(data_unit[missing] @ data_unit[covered].T)  # (M, C)
        k = min(k, len(covered))
        nearest = np.argpartition(-similarity, k - 1, axis=1)[:, :k]  # (M, k)
        vectors = prior_unit[nearest].mean(axis=1)  # (M, d)
        unrelated = np.take_along_axis(similarity, nearest, axis=1).max(axis=1) == 0  # (M,)
        vectors[unrelated] = prior_unit.mean(axis=0)
        filled[missing] = vectors
    return pd.DataFrame(filled, index=genes, columns=prior.columns)


def _unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


def _harmonised_sets(
    gene_sets: dict[str, list[str]], genes: list[str], gene_info: pd.DataFrame | None
) -> dict[str, list[str]]:
    """Gene sets rewritten into the dataset's symbols (exact, case, alias); others dropped."""
    symbols = {gene for members in gene_sets.values() for gene in members}
    mapping = harmonise_symbols(sorted(symbols), genes, gene_info).mapping
    return {
        name: [mapping[gene] for gene in members if gene in mapping]
        for name, members in gene_sets.items()
    }


def _annotated(genes: list[str], gene_sets: dict[str, list[str]]) -> list[str]:
    """The ``genes`` that belong to at least one of ``gene_sets``, in order."""
    members = {gene for genes_in_set in gene_sets.values() for gene in genes_in_set}
    return [gene for gene in genes if gene in members]


def _best_terms(table: pd.DataFrame, dataset: str, variant: str, library: str) -> pd.DataFrame:
    """Each program's lowest-p gene set (the table is sorted by program, then p)."""
    best = table.groupby("program", sort=False).head(1)
    columns = ["program", "program_size", "gene_set", "overlap", "set_size", "fdr"]
    best = best[columns + ["overlap_genes"]].reset_index(drop=True)
    return best.assign(dataset=dataset, variant=variant, library=library)[
        ["dataset", "variant", "library", *columns, "overlap_genes"]
    ]


def markdown_table(results: pd.DataFrame, alpha: float = 0.05) -> str:
    """Dataset × variant table of the headline program-quality metrics."""
    wide = results[results["variant"] != "-"].pivot_table(
        index=["dataset", "variant"], columns="metric", values="value", sort=False
    )
    header = (
        "| dataset | variant | coverage | coherence | STRING ratio (z) | "
        f"Reactome enriched (FDR<{alpha}) | Reactome median best −log10 FDR | "
        f"GO-BP enriched (FDR<{alpha}) | GO-BP median best −log10 FDR |"
    )
    lines = [header, "|---|---|---|---|---|---|---|---|---|"]
    for (dataset, variant), row in wide.iterrows():
        coverage = row["embedding_coverage"]
        cells = [
            dataset,
            variant,
            "–" if coverage != coverage else f"{100 * coverage:.0f}%",
            f"{row['coherence']:.3f}",
            f"{row['string_ratio']:.2f} ({row['string_z_score']:.1f})",
        ]
        for library in LIBRARIES:
            enriched = int(row[f"{library}_n_enriched_programs"])
            total = int(row[f"{library}_n_programs"])
            cells += [
                f"{enriched}/{total} ({100 * enriched / total:.0f}%)",
                f"{row[f'{library}_median_best_neg_log10_fdr']:.2f}",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    context = results[results["variant"] == "-"].pivot_table(
        index="dataset", columns="metric", values="value", sort=False
    )
    notes = [""] + [
        f"{dataset}: {int(row['n_genes'])} genes, {int(row['n_train_cells'])} training cells, "
        f"{int(row['n_programs'])} programs; STRING: {int(row['string_edges'])} edges touching "
        f"{100 * row['string_gene_coverage']:.0f}% of genes; annotated universe: Reactome "
        f"{int(row['reactome_universe_size'])}, GO-BP {int(row['go_bp_universe_size'])} genes."
        for dataset, row in context.iterrows()
    ]
    notes += [
        "",
        "coverage: genes the embedding source covers (others filled from co-expression "
        "neighbours). STRING ratio: within-program STRING (≥700) edge density / its mean over "
        "label shuffles (z vs the shuffles); circular for *_string variants, whose GRC used "
        "that graph. GO-BP is partly circular for go_string (GO terms built its embedding). "
        "Enrichment: hypergeometric, universe = the dataset's genes annotated by the library, "
        "sets with ≥ 3 of them, "
        "BH over all program × set tests.",
    ]
    return "\n".join(lines + notes) + "\n"


def _names(parser: argparse.ArgumentParser, text: str, known, what: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = sorted(set(names) - set(known))
    if unknown:
        parser.error(f"unknown {what}(s) {unknown}; choose from {sorted(known)}")
    return names


if __name__ == "__main__":
    main()
