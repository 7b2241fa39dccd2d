"""Assemble ``report.html`` for a benchmark run from what :func:`perturbflow.eval.loop.run` wrote.

Which runs to show comes from the run metadata (``runs.json``: model, options, peer, programs),
never from model names."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from perturbflow.data.conditions import parse_condition
from perturbflow.data.download import file_sha256
from perturbflow.data.io import PerturbationDataset
from perturbflow.eval.de import de_genes
from perturbflow.eval.loop import RunResult
from perturbflow.eval.summary import REFERENCE_MODEL
from perturbflow.programs.priors import PriorError
from perturbflow.report.benchmark_figures import (
    delta_scatter,
    gi_scatter,
    metric_bars_over_seeds,
    program_heatmap,
)
from perturbflow.report.grn_figures import pr_curves, top_edges_figure
from perturbflow.report.html import package_versions, render_report, write_report
from perturbflow.report.low_sample_figures import TRAIN_CELLS, level_order, low_sample_curves

logger = logging.getLogger(__name__)

HEADLINE = (
    "pearson_delta",
    "pearson_delta_de20",
    "mse_de20",
    "direction_acc_de20",
    "discrimination_l1",
    "energy_distance",
)
GI_GENES = 100


def peers_status(runs: dict[str, dict], out: Path | None = None) -> dict[str, str]:
    """Which optional peers ran, which are installed, and the cell-eval cross-check."""
    from perturbflow.models.peers import peer_status

    ran = {meta["model"].split("[", 1)[0] for meta in runs.values() if meta.get("peer")}
    status = {
        peer: "ran in this benchmark (same splits and metrics)"
        if peer in ran
        else (
            f"installed; not run (add it to --models, e.g. --models all,{peer})"
            if installed
            else state
        )
        for peer, (installed, state) in peer_status().items()
    }
    status.update(_peer_runs(runs, out))
    status["cell-eval"] = "not installed (pip install perturbflow[celleval])"
    path = out / "celleval_crosscheck.csv" if out is not None else None
    if path is not None and path.exists():
        table = pd.read_csv(path)
        worst = table.groupby("metric")["abs_diff"].max()
        status["cell-eval"] = "cross-check on identical inputs, largest |ours − cell-eval|: " + (
            ", ".join(f"{metric} {value:.2g}" for metric, value in worst.items())
        )
    elif importlib.util.find_spec("cell_eval"):
        status["cell-eval"] = "installed; no cross-check in this run"
    return status


def _peer_runs(runs: dict[str, dict], out: Path | None) -> dict[str, str]:
    """Run label of each peer run → its package version, mean fit time and failures."""
    timings_path = out / "timings.csv" if out is not None else None
    timings = (
        pd.read_csv(timings_path)
        if timings_path is not None and timings_path.exists()
        else pd.DataFrame(columns=["model", "fit_s"])
    )
    lines = {}
    for label, meta in runs.items():
        if not meta.get("peer"):
            continue
        fits = timings.loc[timings["model"] == label, "fit_s"]
        parts = [f"version {meta['version']}" if meta.get("version") else "version unknown"]
        if len(fits):
            parts.append(f"fit {fits.mean():.0f} s per seed (mean of {len(fits)})")
        if meta.get("failed"):
            failed = meta["failed"]
            parts.append(f"failed on seed(s) {', '.join(failed)}: {next(iter(failed.values()))}")
        lines[label] = "ran in this benchmark: " + "; ".join(parts)
    return lines


def shown_runs(runs: dict[str, dict], out: Path, seed: int) -> list[str]:
    """Runs whose predictions the figures show: the first that learns gene programs and the
    reference baseline; else the first two runs with predictions."""
    have = [label for label in runs if (out / "predictions" / f"{label}_seed{seed}.csv").exists()]
    chosen = [label for label in have if runs[label].get("programs")][:1]
    chosen += [label for label in have if label == REFERENCE_MODEL]
    return chosen or have[:2]


def build_report(
    out: Path,
    dataset: PerturbationDataset,
    result: RunResult,
    *,
    title: str,
    command: str,
    overwrite: bool = True,
) -> Path:
    """Write ``out/report.html``: summary, metric bars over seeds, delta scatters, GI, programs.

    Figures of real cells use the data the first seed was scored against
    (``result.eval_datasets``, e.g. the target line's centred cells of a ``cross_cell_line``
    run), falling back to ``dataset``.
    """
    summary = result.summary[result.summary["metric"].isin(HEADLINE)]
    figures: dict[str, object] = {}
    results = result.results
    if TRAIN_CELLS in results.columns:
        levels = level_order(results[TRAIN_CELLS])
        if len(levels) > 1:
            figures[
                "Low-sample curves: each metric against training cells per condition, all test "
                "conditions (mean ± sd over seeds; dashed: noise ceiling)"
            ] = low_sample_curves(results)
        # The bars show one level: the most training cells (the predictions figures' level).
        results = results[results[TRAIN_CELLS].astype(str) == levels[-1]]
    figures["Metrics per subgroup (mean ± sd over seeds; dashed: noise ceiling)"] = (
        metric_bars_over_seeds(results)
    )
    seed = min(result.splits)
    split = result.splits[seed]
    dataset = result.eval_datasets.get(seed, dataset)
    models = shown_runs(result.runs, out, seed)
    real = dataset.mean_expression(list(split.test)) - dataset.control_expression().mean(axis=0)
    predicted = {
        model: pd.read_csv(out / "predictions" / f"{model}_seed{seed}.csv", index_col=0)
        for model in models
    }
    shown = sorted(split.test, key=lambda c: (-len(parse_condition(c)), c))[:3]
    de = de_genes(dataset, shown)
    scatters = []
    for condition in shown:
        genes = list(dataset.genes[de[condition]])
        for model, table in predicted.items():
            scatters.append(
                delta_scatter(
                    table.loc[condition],
                    real.loc[condition],
                    genes,
                    f"{model}: {condition} (seed {seed})",
                )
            )
    figures[f"Predicted vs real delta on the top 20 DE genes (seed {seed})"] = scatters
    gi = _gi_figure(dataset, split, predicted)
    if gi is not None:
        figures[
            f"Genetic interactions of held-out doubles: predicted vs real double, top {GI_GENES} "
            "responding genes"
        ] = gi
    for label in [label for label, meta in result.runs.items() if meta.get("programs")][:1]:
        programs_path = out / "programs" / f"{label}_seed{seed}.csv"
        if programs_path.exists():
            figures[f"{label} gene programs: mean real delta per program (seed {seed})"] = (
                program_heatmap(pd.read_csv(programs_path), real)
            )
    try:
        grn_figures, grn_tables, grn_notes = grn_section(dataset)
    except ValueError as error:  # GRNInputError and data too small for the edges: not fatal
        logger.warning("report: regulatory edges not computed: %s", error)
        grn_figures, grn_tables, grn_notes = {}, {}, [f"Regulatory edges not computed: {error}"]
    figures.update(grn_figures)
    provenance = dataset.adata.uns.get("perturbflow", {}).get("dataset", {})
    if provenance:
        checksums = {
            str(provenance.get("path", provenance.get("name", "data"))): str(
                provenance.get("sha256")
            )
        }
    elif Path(dataset.source).is_file():  # a user's file, read with --data
        checksums = {dataset.source: f"sha256 {file_sha256(dataset.source)}"}
    else:
        checksums = {dataset.source: "in-memory data (no file checksum)"}
    html = render_report(
        title=title,
        summary=summary,
        figures=figures,
        command=command,
        versions=package_versions(),
        data_checksums=checksums,
        notes=[
            f"{len(result.splits)} seed(s): {sorted(result.splits)}; split kind {split.kind}",
            "Subgroup sizes are in the summary's n_conditions column and the chart labels: "
            "distinct conditions over all seeds (a split that changes with the seed holds out "
            "different ones).",
            *_context_note(result),
            *_norman_reference_note(dataset),
            *grn_notes,
        ],
        peers_status=peers_status(result.runs, out),
        tables=grn_tables,
    )
    return write_report(html, out / "report.html", overwrite=overwrite)


def _context_note(result: RunResult) -> list[str]:
    """For context splits: the target line of each seed and the space the metrics live in."""
    targets = {
        seed: split.params["target_line"]
        for seed, split in sorted(result.splits.items())
        if "target_line" in split.params
    }
    if not targets:
        return []
    listed = ", ".join(f"seed {seed} → {line}" for seed, line in targets.items())
    return [
        f"Target line per seed: {listed}. Models fit on expression centred on each line's "
        "control mean; their predictions are moved back by the target line's control mean and "
        f"scored against its real cells (figures show seed {min(targets)})."
    ]


def _norman_reference_note(dataset: PerturbationDataset) -> list[str]:
    """For Norman 2019 data: how our GI scores on real deltas match the published fits."""
    name = str(dataset.adata.uns.get("perturbflow", {}).get("dataset", {}).get("name", ""))
    if not name.startswith("norman19"):
        return []
    from perturbflow.data.datasets import data_dir
    from perturbflow.eval.gi import compare_with_reference, gi_table, load_norman_reference

    folder = data_dir()
    try:
        reference = load_norman_reference(folder) if folder is not None else None
    except (FileNotFoundError, ValueError) as error:
        return [f"Norman 2019 published GI fits not compared: {error}"]
    if reference is None:
        return ["Norman 2019 published GI fits not compared: no data folder"]
    deltas = dataset.mean_expression() - dataset.control_expression().mean(axis=0)
    comparison = compare_with_reference(gi_table(deltas), reference).set_index("score")
    parts = [
        f"{score} r={comparison.loc[score, 'pearson']:.2f}"
        for score in ("ts_norm2", "abs_log_ts_ratio", "dcor")
        if score in comparison.index
    ]
    n = int(comparison["n_doubles"].max()) if len(comparison) else 0
    return [
        f"GI scores from this data's real deltas vs the published Norman 2019 fits, {n} shared "
        f"double(s): {', '.join(parts)}. Few doubles and 500 genes: read as a plumbing check."
    ]


def _gi_figure(dataset: PerturbationDataset, split, predicted: dict[str, pd.DataFrame]):
    """GI scores of test doubles whose singles are measured: predicted vs real, first model."""
    try:
        from perturbflow.eval.gi import fit_gi
    except ImportError:  # the GI module is optional for the report
        return None
    singles = {
        next(iter(parse_condition(c))) for c in dataset.conditions if len(parse_condition(c)) == 1
    }
    doubles = [
        c for c in split.test if len(parse_condition(c)) == 2 and parse_condition(c) <= singles
    ]
    if not doubles or not predicted:
        return None
    model, table = next(iter(predicted.items()))
    names = sorted({g for c in doubles for g in parse_condition(c)})
    real = dataset.mean_expression([*names, *doubles]) - dataset.control_expression().mean(axis=0)
    rows = []
    for double in doubles:
        a, b = sorted(parse_condition(double))
        # Fit on the genes that respond most in the real data (the paper used abundant genes);
        # near-zero genes only add noise that drags robust (Theil-Sen) slopes towards zero.
        size = real.loc[[a, b, double]].abs().max(axis=0)
        genes = size.sort_values(ascending=False).index[:GI_GENES]
        da, db = real.loc[a, genes].to_numpy(), real.loc[b, genes].to_numpy()
        truth = fit_gi(da, db, real.loc[double, genes].to_numpy())
        guess = fit_gi(da, db, table.loc[double, genes].to_numpy())
        for score in ("magnitude", "model_fit"):
            if hasattr(truth, score):
                rows.append(
                    {
                        "condition": double,
                        "score": f"{model}: {score}",
                        "predicted": getattr(guess, score),
                        "real": getattr(truth, score),
                    }
                )
    return gi_scatter(pd.DataFrame(rows)) if rows else None


GAIN_OF_FUNCTION = ("CRISPRa",)
GRN_MAX_CELLS = 3000
GRN_TOP_EDGES = 30


def grn_section(dataset: PerturbationDataset, *, data_dir: Path | None = None):
    """Regulatory edges of the screen's single perturbations, for the report.

    Edges from knock-outs (or CRISPRa), from direct-effect regression over every condition and
    from correlation, scored against the screen's true network when it has one (a simulated
    screen) and otherwise against CollecTRI when the priors are available. Returns
    (figures, tables, notes); all empty when the data has fewer than 2 single perturbations of
    measured genes.
    """
    from perturbflow import grn

    genes = list(dataset.genes)
    singles = {
        next(iter(parse_condition(c))) for c in dataset.conditions if len(parse_condition(c)) == 1
    }
    regulators = sorted(singles & set(genes))
    if len(regulators) < 2:
        return {}, {}, []
    record = dataset.adata.uns.get("perturbflow", {}).get("dataset", {})
    perturbation = "gain" if record.get("perturbation_type") in GAIN_OF_FUNCTION else "loss"
    cells = dataset.expression(list(dataset.conditions))  # (N, G)
    rng = np.random.default_rng(0)
    cells = cells[np.sort(rng.choice(len(cells), min(GRN_MAX_CELLS, len(cells)), replace=False))]
    edges = {
        "screen": grn.screen_edges(dataset, regulators=regulators, perturbation=perturbation),
        "regression": grn.regression_edges(dataset, regulators=regulators),
        "correlation": grn.correlation_edges(cells, genes, regulators),
    }
    figures = {
        f"Regulatory network: the {GRN_TOP_EDGES} strongest screen edges "
        "(red activation, blue repression)": top_edges_figure(edges["screen"], top=GRN_TOP_EDGES)
    }
    truth, reference = None, None
    if "grn_edges" in dataset.adata.uns:
        truth, reference = grn.read_network(dataset, genes=genes), "the screen's true network"
    else:
        try:
            truth = grn.read_network("collectri", genes=genes, data_dir=data_dir)
            reference = "CollecTRI (restricted to the measured genes)"
        except (grn.GRNInputError, PriorError, FileNotFoundError) as error:
            logger.info("report: no reference network for the GRN section (%s)", error)
    scored = [r for r in regulators if truth is not None and r in set(truth["source"])]
    if not scored:
        note = "Regulatory edges: no reference network covers the perturbed regulators; not scored."
        return figures, {}, [note]
    figures[f"Regulatory edges: precision-recall against {reference}"] = pr_curves(
        edges, truth, genes=genes, regulators=scored
    )
    table = pd.concat(
        [
            grn.score_edges(table, truth, genes=genes, regulators=scored, method=method)
            for method, table in edges.items()
        ],
        ignore_index=True,
    )
    overall = table[table["regulator"] == "all"].pivot_table(
        index="method", columns="metric", values="value", sort=False
    )
    shown = overall[["auprc", "auprc_ratio", "auroc", "epr", "n_true", "n_candidates"]]
    note = (
        f"Regulatory edges of {len(scored)} perturbed regulator(s) scored against {reference}; "
        "`perturbflow grn` infers, scores and exports them."
    )
    return figures, {f"Regulatory edges against {reference}": shown.reset_index()}, [note]
