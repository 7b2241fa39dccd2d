"""The ``perturbflow`` command line: thin wrappers that parse options and call the library."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import anndata as ad
import pandas as pd
import typer
import yaml
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

from perturbflow import __version__
from perturbflow.data import ReadOptions, read
from perturbflow.data.datasets import DATASETS, load_dataset
from perturbflow.data.datasets import list_datasets as dataset_table
from perturbflow.data.grnsim import GRNScreenConfig, simulate_grn_screen
from perturbflow.data.guides import guide_efficiency
from perturbflow.data.io import UNASSIGNED_LABELS, match_control_cells
from perturbflow.data.outputs import (
    lock_output_dir,
    mark_complete,
    prepare_output_dir,
    write_csv,
    write_figure,
    write_h5ad,
)
from perturbflow.data.splits import GUIDE_KINDS, Split, make_split
from perturbflow.data.synthetic import simulate as simulate_synthetic

# perturbflow.programs, .models, .eval and .report import torch, Lightning and scanpy, which takes
# seconds: commands import them where they need them, so `perturbflow --help` answers at once.

app = typer.Typer(
    name="perturbflow",
    help="Predict single-cell responses to genetic perturbations and evaluate the predictions.",
    epilog="Environment: PERTURBFLOW_DATA_DIR is the data folder (registered datasets, priors/; "
    "default ../shared/data when it exists); PERTURBFLOW_CACHE_DIR holds downloads and cached "
    "gene embeddings (default ~/.cache/perturbflow).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Rich falls back to 80 columns off a terminal (CI logs, pipes): too narrow for the metrics table.
console = Console(width=None if Console().is_terminal else 150)
logger = logging.getLogger("perturbflow")

SUMMARY_METRICS = (
    "pearson_delta",
    "pearson_delta_de20",
    "pearson_systema_de20",
    "mse_de20",
    "direction_acc_de20",
    "discrimination_l1",
    "energy_distance",
)

# Options shared by commands that read a user .h5ad file.
ConditionKey = Annotated[
    str, typer.Option(help="obs column naming each cell's perturbation (e.g. 'A', 'A+B', 'ctrl').")
]
Control = Annotated[
    str | None,
    typer.Option(help="Label of control cells (default: any of ctrl, control, non-targeting)."),
]
GeneKey = Annotated[
    str | None, typer.Option(help="var column holding gene symbols (default: var_names).")
]
Separator = Annotated[str, typer.Option(help="Separator between genes in combination labels.")]
Priors = Annotated[
    Path | None,
    typer.Option(
        help="Data folder holding priors/ (GO, STRING, gene sets); default "
        "$PERTURBFLOW_DATA_DIR, else ../shared/data."
    ),
]
AnnotationFile = Annotated[
    Path | None,
    typer.Option(
        "--annotation",
        help="Gene coordinates (TSV: gene, chrom, start, end, strand; or GTF; or 'hg38', GENCODE "
        "genes downloaded once with a checksum) for the 'locus' and 'sequence' gene embeddings.",
    ),
]
GenomeFile = Annotated[
    Path | None,
    typer.Option("--genome", help="Genome FASTA for the 'sequence' gene embedding."),
]
GeneEmbedding = Annotated[
    str | None,
    typer.Option(
        help="Gene vectors of every model that takes them: data, go, ppi, text, go+ppi, … or an "
        "embedding table path."
    ),
]
RelationGraph = Annotated[
    str | None,
    typer.Option(help="scbig's GRC relation graph: coexpression, ppi, regulons or pathways."),
]
Layer = Annotated[
    str | None,
    typer.Option(help="Read this layer (raw counts or log-normalised) instead of X."),
]
ContextKey = Annotated[
    str | None,
    typer.Option(
        help="obs column of each cell's context (cell line, stimulation, donor): compare "
        "perturbed cells with control cells of the same context."
    ),
]
BatchKey = Annotated[
    str | None,
    typer.Option(help="obs column of each cell's batch: compare within batches too."),
]
GuideKey = Annotated[
    str | None,
    typer.Option(
        help="obs column of each cell's guide: one condition per guide (--condition-key still "
        "names the gene)."
    ),
]
GuideMap = Annotated[
    str | None,
    typer.Option(help="CSV/TSV of guide,gene rows (default: read from the cells)."),
]
Backed = Annotated[
    bool,
    typer.Option(
        "--backed",
        help="Open the .h5ad on disk (anndata's backed mode) instead of loading X: for files "
        "larger than memory; cells are read as each step needs them.",
    ),
]
KeepUnassigned = Annotated[
    bool,
    typer.Option(
        "--keep-unassigned",
        help="Refuse cells whose label means 'no perturbation' (nan, empty, unassigned, "
        "multiplet, …) instead of dropping them.",
    ),
]
Unassigned = Annotated[
    list[str] | None,
    typer.Option(help="Another label meaning 'no perturbation assigned' (repeatable)."),
]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace existing output files.")]


def _version(value: bool) -> None:
    if value:
        console.print(f"perturbflow {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show debug messages.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """perturbflow: predict how cells respond to CRISPR perturbations, and measure it honestly.

    Start with `perturbflow demo`; then `fit`, `predict` and `evaluate` your own .h5ad files.
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=Console(stderr=True), show_path=False)],
        force=True,
    )
    for noisy in (
        "numba",
        "matplotlib",
        "h5py",
        "anndata",
        "fontTools",
        "lightning",
        "lightning.pytorch",
        "lightning.fabric",
    ):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# Library arguments named in error messages → the flags that set them on the command line.
_FLAGS = {
    "condition_key": "--condition-key",
    "control": "--control",
    "gene_key": "--gene-key",
    "separator": "--separator",
    "cell_type_key": "--cell-type-key",
    "context_key": "--context-key",
    "batch_key": "--batch-key",
    "guide_key": "--guide-key",
    "guide_map": "--guide-map",
    "layer": "--layer",
    "keep_unassigned": "--keep-unassigned",
    "unassigned": "--unassigned",
    "overwrite": "--overwrite",
    "checkpoint_dir": "--checkpoint-dir",
}


def _fail(error: Exception) -> None:
    # A KeyError's str() wraps its message in quotes; show the message itself.
    message = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    for name, flag in _FLAGS.items():
        message = re.sub(rf"\b{name}=True\b", flag, message)
        message = re.sub(rf"\b{name}=", f"{flag} ", message)
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(code=1)


def _use_genome_files(annotation: Path | None, genome: Path | None) -> None:
    """--annotation / --genome: the prior bundle of every model of this process reads them
    (through $PERTURBFLOW_ANNOTATION / $PERTURBFLOW_GENOME)."""
    # Lazy: perturbflow.programs.priors imports scanpy (seconds) for commands that never need it.
    from perturbflow.programs.priors.bundle import GENOME_ENV
    from perturbflow.programs.priors.locus import ANNOTATIONS, fetch_gene_annotation

    if annotation is not None and not annotation.exists() and str(annotation) in ANNOTATIONS:
        annotation = fetch_gene_annotation(str(annotation))  # verified download, then cached
    for piece, path in (("annotation", annotation), ("genome", genome)):
        if path is None:
            continue
        if not path.is_file():
            raise FileNotFoundError(f"--{piece} {path}: file not found")
        os.environ[GENOME_ENV[piece]] = str(path.resolve())


def _read_options(
    condition_key,
    control,
    gene_key,
    separator,
    layer,
    keep_unassigned,
    unassigned,
    context_key=None,
    batch_key=None,
    guide_key=None,
    guide_map=None,
    backed=False,
) -> ReadOptions:
    """The one read-options object of every command that reads a user's file."""
    return ReadOptions(
        condition_key=condition_key,
        control=control,
        gene_key=gene_key,
        separator=separator,
        layer=layer,
        keep_unassigned=keep_unassigned,
        unassigned=(*UNASSIGNED_LABELS, *(unassigned or ())),
        context_key=context_key,
        batch_key=batch_key,
        guide_key=guide_key,
        guide_map=guide_map,
        backed=backed,
    )


def _refuse_unknown_genes(model, names: list[str]) -> None:
    """--strict: every gene of ``names`` (letter case aside) must be known to the model."""
    from perturbflow.data.conditions import parse_condition
    from perturbflow.models.base import match_gene_names  # heavy: torch

    known = model.known_genes()
    matched = match_gene_names(names, known, owner=model.name, reported=set())
    unknown = sorted({g for name in matched for g in parse_condition(name)} - known)
    if unknown:
        raise ValueError(
            f"{model.name} never measured or saw perturbed, and has no vector for: "
            f"{', '.join(unknown)}; drop --strict to predict them with the model's fallback"
        )


def _model_runs(
    models: str,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    defaults: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
):
    """The runs of a command: ``--models`` (``all`` expanded), each model's YAML options, then
    command-line values. ``defaults`` fill fields the YAML leaves out, ``overrides`` replace
    them; both reach only models whose config has the field, and ``None`` means not given.
    ``gene_embedding`` goes to the model's gene-vector field (``variant_field``)."""
    from perturbflow.eval.loop import RunSpec, model_runs  # heavy: torch
    from perturbflow.models.base import make_config, model_class

    for name, values in (options or {}).items():
        make_config(name, dict(values))  # validate before any training starts
    runs = []
    for spec in model_runs(models, options):
        cls = model_class(spec.model)
        config_class = getattr(cls, "config_class", None)
        fields = {f.name for f in dataclasses.fields(config_class)} if config_class else set()
        rename = {"gene_embedding": getattr(cls, "variant_field", "gene_embedding")}

        def given(values, rename=rename, fields=fields):
            named = {rename.get(key, key): value for key, value in (values or {}).items()}
            return {k: v for k, v in named.items() if v is not None and k in fields}

        values = {k: v for k, v in given(defaults).items() if k not in spec.options}
        values = {**values, **spec.options, **given(overrides)}
        run_spec = RunSpec(spec.label, spec.model, values)
        run_spec.config(0)
        runs.append(run_spec)
    return runs


# Short column labels of the terminal table; its caption spells each out.
_SHORT_METRIC = {
    "pearson_delta": "rΔ",
    "pearson_delta_de20": "rΔ de20",
    "mse_de20": "mse de20",
    "direction_acc_de20": "dir de20",
    "discrimination_l1": "discr",
    "energy_distance": "energy",
}


def summary_table(results, title: str) -> Table:
    """Rich table: mean of each metric per subgroup and model."""
    from perturbflow.eval.metrics import METRICS  # heavy: torch

    shown = [metric for metric in SUMMARY_METRICS if metric in set(results["metric"])]
    if "train_cells" in results.columns:  # a low-sample curve: one row per model and level
        level = results["train_cells"].astype(str)
        results = results.assign(model=results["model"] + " (" + level + " cells)")
    pivot = results.pivot_table(
        index=["subgroup", "model"], columns="metric", values="value", aggfunc="mean"
    )
    counts = results.groupby(["subgroup", "model"])["condition"].nunique()
    legend = "; ".join(f"{_SHORT_METRIC.get(m, m)} = {m}" for m in shown)
    table = Table(title=title, show_lines=False, caption=legend, caption_justify="left")
    table.add_column("subgroup", overflow="fold")
    table.add_column("model", overflow="fold")
    table.add_column("n", justify="right")
    for metric in shown:
        arrow = "↑" if METRICS[metric].higher_is_better else "↓"
        table.add_column(f"{_SHORT_METRIC.get(metric, metric)} {arrow}", justify="right")
    previous = None
    for (subgroup, model), row in pivot.iterrows():
        label = subgroup if subgroup != previous else ""
        if previous is not None and subgroup != previous:
            table.add_section()
        previous = subgroup
        cells = [
            f"{row[metric]:.3f}" if metric in row and row[metric] == row[metric] else "nan"
            for metric in shown
        ]
        style = "dim italic" if model == "noise_ceiling" else None
        table.add_row(label, model, str(counts[(subgroup, model)]), *cells, style=style)
    return table


@app.command()
def demo(
    out: Annotated[
        Path, typer.Option(help="New run folder for results.csv, split.json, figure.")
    ] = Path("runs/demo"),
    split_kind: Annotated[
        str, typer.Option("--split", help="Split kind: simulation, combo, unseen_single, random.")
    ] = "simulation",
    models: Annotated[
        str,
        typer.Option(
            help="Comma-separated models; 'all' = every built-in model (add peers by name: all,gears)."
        ),
    ] = "all",
    seed: Annotated[int, typer.Option(help="Seed of the simulation, split and predictions.")] = 0,
    n_cells: Annotated[int, typer.Option(help="Predicted cells per condition.")] = 100,
    de_overlap: Annotated[
        bool,
        typer.Option(
            help="Also score cell-eval's DE overlap (overlap_at_N; a rank test per gene)."
        ),
    ] = False,
    priors: Priors = None,
    annotation: AnnotationFile = None,
    genome: GenomeFile = None,
    gene_embedding: GeneEmbedding = None,
    relation_graph: RelationGraph = None,
    overwrite: Overwrite = False,
) -> None:
    """Simulate a screen, split it, fit every model, evaluate and write a small report.

    Writes results.csv (long format), summary.csv, split.json, timings.csv and metrics.png
    into OUT and prints a table of mean metrics per test subgroup and model.
    """
    from perturbflow.eval.evaluate import summarize  # heavy: torch
    from perturbflow.eval.loop import run
    from perturbflow.report.figures import metric_bars

    try:
        _use_genome_files(annotation, genome)
        runs = _model_runs(
            models,
            overrides={
                "priors": str(priors) if priors is not None else None,
                "gene_embedding": gene_embedding,
                "relation_graph": relation_graph,
            },
        )
        folder = prepare_output_dir(out, overwrite=overwrite)
    except (KeyError, ValueError, FileExistsError) as error:
        _fail(error)
    with console.status("simulating a screen") as status:
        dataset = read(simulate_synthetic(seed=seed))
        result = run(
            dataset,
            split_kind,
            runs,
            seeds=[seed],
            n_cells=n_cells,
            progress=lambda text: status.update(text),
            de_overlap=de_overlap,
        )
        result.splits[seed].save(folder / "split.json", overwrite=True)
    write_csv(result.results, folder / "results.csv", overwrite=True)
    write_csv(summarize(result.results), folder / "summary.csv", overwrite=True)
    write_csv(result.timings, folder / "timings.csv", overwrite=True)
    write_figure(metric_bars(result.results), folder / "metrics.png", overwrite=True)
    mark_complete(folder)
    console.print(
        summary_table(result.results, f"perturbflow demo — {split_kind} split, seed {seed}")
    )
    console.print(f"results written to [bold]{folder}[/]")


@app.command()
def fit(
    data: Annotated[Path, typer.Argument(help="Input .h5ad (raw counts or log-normalised).")],
    out: Annotated[Path, typer.Option(help="Checkpoint file to write (.npz).")],
    model: Annotated[str, typer.Option(help="Model name (see `perturbflow models`).")] = "additive",
    split: Annotated[
        Path | None, typer.Option(help="Split JSON to use (default: make one with --split-kind).")
    ] = None,
    split_kind: Annotated[
        str, typer.Option(help="Split kind when no --split is given.")
    ] = "simulation",
    split_out: Annotated[
        Path | None,
        typer.Option(help="Where to save the split made here (default: next to --out)."),
    ] = None,
    config: Annotated[Path | None, typer.Option(help="YAML file with model options.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the split and of the model.")] = 0,
    accelerator: Annotated[
        str | None, typer.Option(help="Trainable models: 'cpu', 'gpu' or 'auto'.")
    ] = None,
    devices: Annotated[
        int | None, typer.Option(help="Trainable models: number of devices (e.g. 4 GPUs).")
    ] = None,
    strategy: Annotated[
        str | None, typer.Option(help="Trainable models: Lightning strategy, e.g. 'ddp'.")
    ] = None,
    num_nodes: Annotated[
        int | None,
        typer.Option(help="Trainable models: machines of a multi-node 'ddp' run (torchrun/SLURM)."),
    ] = None,
    checkpoint_dir: Annotated[
        Path | None,
        typer.Option(help="Trainable models: keep training checkpoints here; rerun to resume."),
    ] = None,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Show training progress bars.")
    ] = True,
    priors: Priors = None,
    annotation: AnnotationFile = None,
    genome: GenomeFile = None,
    gene_embedding: GeneEmbedding = None,
    relation_graph: RelationGraph = None,
    condition_key: ConditionKey = "condition",
    control: Control = None,
    gene_key: GeneKey = None,
    separator: Separator = "+",
    layer: Layer = None,
    context_key: ContextKey = None,
    batch_key: BatchKey = None,
    guide_key: GuideKey = None,
    guide_map: GuideMap = None,
    keep_unassigned: KeepUnassigned = False,
    unassigned: Unassigned = None,
    backed: Backed = False,
    overwrite: Overwrite = False,
) -> None:
    """Fit a model on the training conditions of a split and save a self-describing checkpoint."""
    from perturbflow.models import get_model  # heavy: torch
    from perturbflow.programs.priors import PriorError
    from perturbflow.train import is_global_zero

    try:
        options = _read_yaml(config) if config else {}
        if "," in model or model == "all":
            raise ValueError(f"--model takes one model name, got {model!r}")
        _use_genome_files(annotation, genome)
        (spec,) = _model_runs(
            model,
            {model: options},
            defaults={
                "accelerator": accelerator,
                "devices": devices,
                "strategy": strategy,
                "num_nodes": num_nodes,
                "progress": progress,
            },
            overrides={
                "priors": str(priors) if priors is not None else None,
                "gene_embedding": gene_embedding,
                "relation_graph": relation_graph,
            },
        )
        model_config = spec.config(seed)
        # Under 'ddp' the launcher reruns this command once per extra device; only rank 0 (the
        # command the user typed) checks and writes files, the workers only train.
        writer = is_global_zero()
        for path in (out, split_out or out.with_suffix(".split.json")):
            exists = writer and path.exists() and not overwrite
            if exists and not (split is not None and path != out):
                raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
        dataset = _read_options(
            condition_key,
            control,
            gene_key,
            separator,
            layer,
            keep_unassigned,
            unassigned,
            context_key,
            batch_key,
            guide_key,
            guide_map,
            backed=backed,
        ).read(data)
        if split is not None:
            chosen = Split.load(split)
        else:
            extra = {"guide_map": dataset.guide_genes} if split_kind in GUIDE_KINDS else {}
            chosen = make_split(split_kind, dataset.conditions, seed=seed, **extra)
            if writer:
                chosen.save(split_out or out.with_suffix(".split.json"), overwrite=overwrite)
        estimator = get_model(model, model_config)
        extra = {}
        if checkpoint_dir is not None:
            if not getattr(estimator, "resumable", False):
                raise ValueError(f"model {model!r} trains in one pass; drop --checkpoint-dir")
            extra["checkpoint_dir"] = checkpoint_dir
        console.print(f"fitting {model} on {len(chosen.train)} training conditions")
        fitted = estimator.fit(dataset, chosen, **extra)
        if not writer:
            return  # a 'ddp' worker: its model equals rank 0's, which alone writes the checkpoint
        fitted.save(out, overwrite=overwrite)
    except (ValueError, KeyError, FileNotFoundError, FileExistsError, PriorError) as error:
        _fail(error)
    console.print(f"{model} fitted on {len(chosen.train)} training conditions → [bold]{out}[/]")


@app.command()
def predict(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint written by `perturbflow fit`.")],
    out: Annotated[Path, typer.Option(help="Output .h5ad of predicted cells.")],
    conditions: Annotated[
        str | None, typer.Option(help="Comma-separated conditions, e.g. 'KLF1,KLF1+MAP2K6'.")
    ] = None,
    split: Annotated[
        Path | None, typer.Option(help="Predict the test conditions of this split JSON.")
    ] = None,
    n_cells: Annotated[int, typer.Option(help="Predicted cells per condition.")] = 100,
    seed: Annotated[int, typer.Option(help="Seed of the sampled cells.")] = 0,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            help="Refuse genes the model never measured, saw perturbed or has a vector for "
            "(default: warn once and use the model's fallback).",
        ),
    ] = False,
    overwrite: Overwrite = False,
) -> None:
    """Predict cells for conditions (seen, new combinations or unseen genes) from a checkpoint."""
    from perturbflow.models import load_model  # heavy: torch

    try:
        if (conditions is None) == (split is None):
            raise ValueError("give exactly one of --conditions or --split")
        if out.exists() and not overwrite:
            raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
        names = (
            [c.strip() for c in conditions.split(",") if c.strip()]
            if conditions
            else list(Split.load(split).test)
        )
        model = load_model(checkpoint)
        if strict:
            _refuse_unknown_genes(model, names)
        predictions = model.predict(names, n_cells=n_cells, seed=seed)
        write_h5ad(predictions, out, overwrite=overwrite)
    except (ValueError, KeyError, FileNotFoundError, FileExistsError) as error:
        _fail(error)
    console.print(
        f"{predictions.n_obs} cells for {len(names)} condition(s) from {model.name} → [bold]{out}[/]"
    )


@app.command()
def evaluate(
    data: Annotated[Path, typer.Argument(help="The real data (.h5ad).")],
    predictions: Annotated[Path, typer.Option(help="Predicted cells (.h5ad from `predict`).")],
    split: Annotated[Path, typer.Option(help="Split JSON: gives test conditions and subgroups.")],
    out: Annotated[Path, typer.Option(help="Output CSV of per-condition metrics (long format).")],
    seed: Annotated[
        int, typer.Option(help="Seed recorded in the table and used for subsampling.")
    ] = 0,
    ceiling: Annotated[
        bool,
        typer.Option("--noise-ceiling/--no-noise-ceiling", help="Add split-half noise ceiling."),
    ] = True,
    condition_key: ConditionKey = "condition",
    control: Control = None,
    gene_key: GeneKey = None,
    separator: Separator = "+",
    layer: Layer = None,
    context_key: ContextKey = None,
    batch_key: BatchKey = None,
    guide_key: GuideKey = None,
    guide_map: GuideMap = None,
    keep_unassigned: KeepUnassigned = False,
    unassigned: Unassigned = None,
    overwrite: Overwrite = False,
) -> None:
    """Score predicted cells against real cells with every metric of docs/method.md §5."""
    from perturbflow.eval.de import de_genes  # heavy: torch
    from perturbflow.eval.evaluate import evaluate as run_evaluate
    from perturbflow.eval.evaluate import noise_ceiling

    try:
        if out.exists() and not overwrite:
            raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
        dataset = _read_options(
            condition_key,
            control,
            gene_key,
            separator,
            layer,
            keep_unassigned,
            unassigned,
            context_key,
            batch_key,
            guide_key,
            guide_map,
        ).read(data)
        chosen = Split.load(split)
        if not predictions.exists():
            raise FileNotFoundError(f"{predictions}: predictions file not found")
        predicted = ad.read_h5ad(predictions)
        de = de_genes(dataset, list(chosen.test))
        frames = [run_evaluate(predicted, dataset, chosen, seed=seed, de=de)]
        if ceiling:
            frames.append(noise_ceiling(dataset, chosen, seed=seed, de=de))
        results = pd.concat(frames, ignore_index=True)
        write_csv(results, out, overwrite=overwrite)
    except (ValueError, KeyError, FileNotFoundError, FileExistsError) as error:
        _fail(error)
    console.print(summary_table(results, f"evaluation of {predictions.name}"))
    console.print(f"metrics written to [bold]{out}[/]")


@app.command()
def benchmark(
    source: Annotated[
        str | None,
        typer.Argument(
            metavar="DATA",
            help="A .h5ad file, a registered dataset name (see `perturbflow datasets`) or "
            "'synthetic' (the default).",
        ),
    ] = None,
    out: Annotated[
        Path, typer.Option(help="Run folder: results, summary, splits, report.html.")
    ] = Path("runs/benchmark"),
    # The spelling of the commands recorded in benchmarks/RESULTS.md, kept so they still run.
    dataset: Annotated[str | None, typer.Option(hidden=True)] = None,
    data: Annotated[Path | None, typer.Option(hidden=True)] = None,
    split_kind: Annotated[
        str,
        typer.Option(
            "--split",
            help="Split kind: simulation, combo, unseen_single, random, cross_cell_line, "
            "cross_context (hold out conditions in one context of --context-key), unseen_guide "
            "or unseen_guide_gene (with --guide-key).",
        ),
    ] = "simulation",
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds, e.g. 1,2,3,4,5.")] = "1,2,3",
    models: Annotated[
        str,
        typer.Option(
            help="Comma-separated models; 'all' = every built-in model (add peers by name: all,gears)."
        ),
    ] = "all",
    n_cells: Annotated[int, typer.Option(help="Predicted cells per condition.")] = 100,
    de_overlap: Annotated[
        bool,
        typer.Option(
            help="Also score cell-eval's DE overlap (overlap_at_N; a rank test per gene)."
        ),
    ] = True,
    report: Annotated[
        bool,
        typer.Option(
            help="Write report.html (figures take a few seconds; results and summary are "
            "written either way)."
        ),
    ] = True,
    train_cells: Annotated[
        str | None,
        typer.Option(
            help="Low-sample curve: training cells per condition, comma-separated levels, e.g. "
            "10,25,50,all; every model is fitted at every level (test cells stay whole)."
        ),
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Data folder (default: $PERTURBFLOW_DATA_DIR).")
    ] = None,
    download: Annotated[
        bool, typer.Option("--download", help="Download a registered public dataset if needed.")
    ] = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted run in OUT.")
    ] = False,
    model_config: Annotated[
        Path | None,
        typer.Option(help="YAML mapping model name → options, e.g. 'scbig: {flow_steps: 200}'."),
    ] = None,
    priors: Priors = None,
    annotation: AnnotationFile = None,
    genome: GenomeFile = None,
    gene_embedding: GeneEmbedding = None,
    relation_graph: RelationGraph = None,
    cell_type_key: Annotated[
        str | None,
        typer.Option(
            help="obs column of each cell's line, for --split cross_cell_line/cross_context "
            "(default: --context-key, else the "
            "registered dataset's)."
        ),
    ] = None,
    condition_key: ConditionKey = "condition",
    control: Control = None,
    gene_key: GeneKey = None,
    separator: Separator = "+",
    layer: Layer = None,
    context_key: ContextKey = None,
    batch_key: BatchKey = None,
    guide_key: GuideKey = None,
    guide_map: GuideMap = None,
    keep_unassigned: KeepUnassigned = False,
    unassigned: Unassigned = None,
    backed: Backed = False,
    overwrite: Overwrite = False,
) -> None:
    """Fit every model on every seed's split, evaluate all metrics and write a report.

    Writes results.csv (long format), summary.csv (mean ± sd over seeds, win rate and paired
    difference vs additive, fraction of the noise ceiling), timings.csv, splits/*.json,
    predictions/*.csv and a self-contained report.html (unless --no-report) into OUT.
    """
    from perturbflow.eval.loop import run  # heavy: torch
    from perturbflow.report.benchmark_report import build_report

    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
        if not seed_list:
            raise ValueError("--seeds needs at least one seed")
        levels = _train_cells(train_cells)
        if resume and out.exists():
            folder = lock_output_dir(out)  # a second process resuming the same OUT refuses
        else:
            folder = prepare_output_dir(out, overwrite=overwrite)
        command = "perturbflow " + " ".join(sys.argv[1:])
        (folder / "command.txt").write_text(command + "\n")
        options = _read_yaml(model_config) if model_config else {}
        bad = [name for name, values in options.items() if not isinstance(values, dict)]
        if bad:
            raise ValueError(f"{model_config}: options of {bad} must be mappings of option: value")
        _use_genome_files(annotation, genome)
        runs = _model_runs(
            models,
            options,
            overrides={
                "priors": str(priors) if priors is not None else None,
                "gene_embedding": gene_embedding,
                "relation_graph": relation_graph,
            },
        )
        reading = _read_options(
            condition_key,
            control,
            gene_key,
            separator,
            layer,
            keep_unassigned,
            unassigned,
            context_key,
            batch_key,
            guide_key,
            guide_map,
            backed=backed,
        )
        given = [value for value in (source, dataset, data) if value is not None]
        if len(given) > 1:
            raise ValueError("give the data once: DATA (a .h5ad file or a registered name)")
        chosen = str(given[0]) if given else "synthetic"
        loaded = _benchmark_data(chosen, data_dir, download, reading)
        if chosen in DATASETS and (context_key or batch_key):
            loaded = match_control_cells(loaded, context_key=context_key, batch_key=batch_key)
        if cell_type_key is not None:
            loaded = dataclasses.replace(loaded, cell_type_key=cell_type_key)
        with console.status("benchmarking") as status:
            result = run(
                loaded,
                split_kind,
                runs,
                seeds=seed_list,
                out=folder,
                n_cells=n_cells,
                resume=resume,
                progress=lambda text: status.update(text),
                train_cells=levels,
                de_overlap=de_overlap,
            )
            label = chosen
            if report:
                status.update("writing report.html")
                build_report(
                    folder,
                    loaded,
                    result,
                    title=f"perturbflow benchmark — {label}, {split_kind} split",
                    command=command,
                )
    except (ValueError, KeyError, FileNotFoundError, FileExistsError) as error:
        _fail(error)
    console.print(summary_table(result.results, f"benchmark — {label}, {split_kind} split"))
    mark_complete(folder)
    written = "results and report.html" if report else "results (no report.html)"
    console.print(f"{written} written to [bold]{folder}[/]")


def _train_cells(text: str | None):
    """``--train-cells`` as levels (``None`` without the option); bad values name the flag."""
    from perturbflow.data.subsample import TrainCellsError, parse_train_cells

    if text is None:
        return None
    try:
        return parse_train_cells(text)
    except TrainCellsError as error:
        raise ValueError(f"--train-cells {text!r}: {error}") from None


# CLI size options → each engine's config fields.
_SIMULATION_SIZES = {
    "synthetic": {
        "singles": "n_perturbed",
        "doubles": "n_doubles",
        "cells": "n_cells_per_condition",
        "genes": "n_genes",
        "control_cells": "n_control_cells",
    },
    "sergio": {
        "singles": "n_singles",
        "doubles": "n_doubles",
        "cells": "n_cells",
        "genes": "n_genes",
        "control_cells": "n_control_cells",
    },
}


@app.command()
def simulate(
    out: Annotated[Path, typer.Option(help="Output .h5ad of the simulated screen.")],
    engine: Annotated[
        str,
        typer.Option(
            help="'synthetic' (built-in program simulator, log-normalised X) or 'sergio' "
            "(GRN knock-outs with sergio-rs, raw counts; needs the sim extra)."
        ),
    ] = "synthetic",
    network: Annotated[
        str | None,
        typer.Option(
            help="sergio only: collectri, dorothea or a CSV/TSV with source, target, sign "
            "columns (default collectri)."
        ),
    ] = None,
    singles: Annotated[
        int | None,
        typer.Option(
            help="Single perturbations (sergio: knocked-out regulators, default 50; synthetic: "
            "measured perturbed genes, plus its unmeasured targets)."
        ),
    ] = None,
    doubles: Annotated[int | None, typer.Option(help="Double perturbations.")] = None,
    cells: Annotated[int | None, typer.Option(help="Cells per perturbation.")] = None,
    genes: Annotated[int | None, typer.Option(help="Genes measured.")] = None,
    control_cells: Annotated[int | None, typer.Option(help="Control cells.")] = None,
    regulators: Annotated[
        int | None,
        typer.Option(help="sergio only: regulators in the sub-network (default 60)."),
    ] = None,
    contexts: Annotated[
        int | None,
        typer.Option(
            help="Cell contexts (default 1): synthetic, contexts with their own baselines "
            "(obs['context']); sergio, cell types with their own master-regulator rates, every "
            "condition in each (obs['cell_type'], --cells and --control-cells per type)."
        ),
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed (default: the engine's, synthetic 0, sergio 1).")
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            help="sergio only: data folder holding priors/ (default $PERTURBFLOW_DATA_DIR, "
            "else ../shared/data)."
        ),
    ] = None,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Show a progress bar (sergio).")
    ] = True,
    overwrite: Overwrite = False,
) -> None:
    """Simulate a Perturb-seq screen with known ground truth and write it as .h5ad.

    `synthetic` plants gene programs and interaction types; `sergio` knocks out regulators of a
    CollecTRI/DoRothEA sub-network and records the true network in uns["grn_edges"].
    """
    sizes = {
        "singles": singles,
        "doubles": doubles,
        "cells": cells,
        "genes": genes,
        "control_cells": control_cells,
    }
    try:
        if engine not in _SIMULATION_SIZES:
            raise ValueError(f"unknown engine {engine!r}; choose {' or '.join(_SIMULATION_SIZES)}")
        if out.exists() and not overwrite:
            raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
        names = _SIMULATION_SIZES[engine]
        options = {names[size]: value for size, value in sizes.items() if value is not None}
        if seed is not None:
            options["seed"] = seed
        if contexts is not None:
            options["n_contexts" if engine == "synthetic" else "n_cell_types"] = contexts
        sergio_only = {"--network": network, "--regulators": regulators, "--data-dir": data_dir}
        if engine == "synthetic":
            given = [flag for flag, value in sergio_only.items() if value is not None]
            if given:
                raise ValueError(f"{', '.join(given)} only apply to --engine sergio")
            adata = simulate_synthetic(**options)
        else:
            for key, value in (("network", network), ("n_regulators", regulators)):
                if value is not None:
                    options[key] = value
            config = GRNScreenConfig(**options)
            adata = simulate_grn_screen(config, data_dir=data_dir, progress=progress)
        write_h5ad(adata, out, overwrite=overwrite)
    except (ValueError, KeyError, FileNotFoundError, FileExistsError, ImportError) as error:
        _fail(error)
    n_conditions = adata.obs["condition"].nunique()
    console.print(
        f"{adata.n_obs} cells × {adata.n_vars} genes, {n_conditions} conditions ({engine}) "
        f"→ [bold]{out}[/]"
    )


def _benchmark_data(source: str, data_dir, download, reading: ReadOptions):
    """DATA of `perturbflow benchmark`: a .h5ad path, 'synthetic' or a registered dataset name."""
    if source == "synthetic":
        return read(simulate_synthetic())
    if source in DATASETS:
        return load_dataset(source, data_dir=data_dir, download=download)
    path = Path(source)
    if path.suffix == ".h5ad" or path.exists():
        return reading.read(path)
    raise ValueError(
        f"DATA {source!r} is neither a file nor a registered dataset; registered: "
        f"{', '.join(sorted(DATASETS))} (see `perturbflow datasets`), or 'synthetic'"
    )


grn_app = typer.Typer(
    help="Gene regulatory networks: infer edges from a screen or expression, score them against "
    "a known network, and complete a prior network with graph attention.",
    no_args_is_help=True,
)
app.add_typer(grn_app, name="grn")

GRN_METHODS = ("screen", "regression", "tree", "correlation", "model")
EDGE_FORMATS = ("csv", "beeline", "graphml")
Truth = Annotated[
    str,
    typer.Option(
        help="Known network: collectri, dorothea, beeline_hepg2_chip, beeline_string, a CSV/TSV "
        "of source,target[,sign], or 'data' for a simulated screen's own network."
    ),
]
DataDir = Annotated[
    Path | None,
    typer.Option(
        help="Data folder holding priors/ (default $PERTURBFLOW_DATA_DIR, else ../shared/data)."
    ),
]


@grn_app.command("infer")
def grn_infer(
    data: Annotated[Path, typer.Argument(help="Screen or expression data (.h5ad).")],
    out: Annotated[Path, typer.Option(help="Edges file to write.")],
    method: Annotated[
        str,
        typer.Option(
            help="screen (knock-out vs control: |Welch t|), regression (direct effects from every "
            "condition), tree (GRNBoost2-style), correlation, or model (in-silico perturbation "
            "of --checkpoint)."
        ),
    ] = "screen",
    regulators: Annotated[
        str | None,
        typer.Option(help="Comma-separated regulators (default: every perturbed measured gene)."),
    ] = None,
    perturbation: Annotated[
        str, typer.Option(help="loss (knock-out/knock-down) or gain (CRISPRa): sets edge signs.")
    ] = "loss",
    checkpoint: Annotated[
        Path | None, typer.Option(help="method=model: a checkpoint written by `perturbflow fit`.")
    ] = None,
    direct_only: Annotated[
        bool,
        typer.Option(
            "--direct-only",
            help="method=screen: drop edges explained by a stronger two-step path.",
        ),
    ] = False,
    edge_format: Annotated[
        str, typer.Option("--format", help="csv (every column), beeline or graphml.")
    ] = "csv",
    max_cells: Annotated[
        int, typer.Option(help="tree/correlation: cells sampled from the data.")
    ] = 3000,
    seed: Annotated[int, typer.Option(help="Seed of cell sampling and trees.")] = 0,
    n_jobs: Annotated[int, typer.Option(help="tree: parallel targets.")] = 1,
    condition_key: ConditionKey = "condition",
    control: Control = None,
    gene_key: GeneKey = None,
    separator: Separator = "+",
    layer: Layer = None,
    keep_unassigned: KeepUnassigned = False,
    unassigned: Unassigned = None,
    overwrite: Overwrite = False,
) -> None:
    """Infer regulator → target edges and write them (CSV, BEELINE ranked edges or GraphML)."""
    import numpy as np

    from perturbflow import grn  # heavy: torch

    try:
        _check_choice("--method", method, GRN_METHODS)
        _check_choice("--format", edge_format, EDGE_FORMATS)
        if out.exists() and not overwrite:
            raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
        if (method == "model") != (checkpoint is not None):
            raise ValueError("--checkpoint goes with --method model, and only with it")
        dataset = _read_options(
            condition_key, control, gene_key, separator, layer, keep_unassigned, unassigned
        ).read(data)
        chosen = [r.strip() for r in regulators.split(",") if r.strip()] if regulators else None
        if method == "screen":
            edges = grn.screen_edges(dataset, regulators=chosen, perturbation=perturbation)
            if direct_only:
                edges = grn.transitive_reduction(edges)
                edges = edges[~edges["indirect"]].drop(columns=["indirect", "via"])
        elif method == "regression":
            edges = grn.regression_edges(dataset, regulators=chosen)
        elif method == "model":
            from perturbflow.models import load_model

            if not chosen:
                raise ValueError(
                    "--method model needs --regulators (the genes to perturb in silico)"
                )
            edges = grn.model_edges(load_model(checkpoint), chosen, perturbation=perturbation)
        else:
            cells = dataset.expression(list(dataset.conditions))  # (N, G)
            rng = np.random.default_rng(seed)
            cells = cells[
                np.sort(rng.choice(len(cells), min(max_cells, len(cells)), replace=False))
            ]
            genes = list(dataset.genes)
            sources = chosen or sorted(set(dataset.perturbed_genes) & set(genes)) or genes
            edges = (
                grn.tree_edges(cells, genes, sources, seed=seed, n_jobs=n_jobs)
                if method == "tree"
                else grn.correlation_edges(cells, genes, sources)
            )
        writer = {
            "csv": grn.write_edges_csv,
            "beeline": grn.write_beeline,
            "graphml": grn.write_graphml,
        }[edge_format]
        writer(edges, out, overwrite=overwrite)
    except (ValueError, KeyError, FileNotFoundError, FileExistsError) as error:
        _fail(error)
    console.print(
        f"{len(edges)} edges from {edges['source'].nunique()} regulator(s) ({method}) → [bold]{out}[/]"
    )


@grn_app.command("score")
def grn_score(
    data: Annotated[Path, typer.Argument(help="The data the edges came from (.h5ad): its genes.")],
    edges: Annotated[Path, typer.Argument(help="Edges CSV written by `perturbflow grn infer`.")],
    out: Annotated[Path, typer.Option(help="Metrics CSV (long format).")],
    truth: Truth = "collectri",
    regulators: Annotated[
        str | None, typer.Option(help="Comma-separated regulators (default: the edges' sources).")
    ] = None,
    confidence: Annotated[str, typer.Option(help="DoRothEA confidence levels kept.")] = "ABC",
    permutations: Annotated[
        int, typer.Option(help="Permutations of the EPR p-value (0: none).")
    ] = 0,
    data_dir: DataDir = None,
    condition_key: ConditionKey = "condition",
    control: Control = None,
    gene_key: GeneKey = None,
    separator: Separator = "+",
    layer: Layer = None,
    keep_unassigned: KeepUnassigned = False,
    unassigned: Unassigned = None,
    overwrite: Overwrite = False,
) -> None:
    """Score edges against a known network: AUPRC, AUROC, their ratio to chance and early precision."""
    from perturbflow import grn  # heavy: torch

    try:
        if out.exists() and not overwrite:
            raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
        dataset = _read_options(
            condition_key, control, gene_key, separator, layer, keep_unassigned, unassigned
        ).read(data)
        genes = list(dataset.genes)
        predicted = grn.read_edges_csv(edges)
        known = grn.read_network(
            dataset if truth == "data" else truth,
            genes=genes,
            data_dir=data_dir,
            confidence=confidence,
        )
        chosen = [r.strip() for r in regulators.split(",") if r.strip()] if regulators else None
        table = grn.score_edges(predicted, known, genes=genes, regulators=chosen, method=edges.stem)
        if permutations > 0:
            p = grn.epr_permutation_pvalue(
                predicted, known, genes=genes, regulators=chosen, n_permutations=permutations
            )
            extra = {"method": edges.stem, "regulator": "all", "metric": "epr_pvalue", "value": p}
            table = pd.concat([table, pd.DataFrame([extra])], ignore_index=True)
        write_csv(table, out, overwrite=overwrite)
    except (ValueError, KeyError, FileNotFoundError, FileExistsError) as error:
        _fail(error)
    console.print(_grn_table(table, f"{edges.name} against {truth}"))
    console.print(f"metrics written to [bold]{out}[/]")


@grn_app.command("complete")
def grn_complete(
    data: Annotated[Path, typer.Argument(help="Expression data (.h5ad) for the gene features.")],
    out: Annotated[Path, typer.Option(help="Metrics CSV of the held-out edges.")],
    network: Truth = "collectri",
    features: Annotated[
        str,
        typer.Option(
            help="Gene features: encoder (the project's GCAE on this data), expression "
            "(statistics and PC loadings) or prior:go / prior:ppi / prior:text."
        ),
    ] = "encoder",
    held_out: Annotated[float, typer.Option(help="Share of the network's edges held out.")] = 0.2,
    epochs: Annotated[int, typer.Option(help="Training epochs of the link predictor.")] = 100,
    seed: Annotated[int, typer.Option(help="Seed of the edge split, features and training.")] = 0,
    scores_out: Annotated[
        Path | None, typer.Option(help="Also write every scored held-out pair (CSV).")
    ] = None,
    data_dir: DataDir = None,
    condition_key: ConditionKey = "condition",
    control: Control = None,
    gene_key: GeneKey = None,
    separator: Separator = "+",
    layer: Layer = None,
    keep_unassigned: KeepUnassigned = False,
    unassigned: Unassigned = None,
    overwrite: Overwrite = False,
) -> None:
    """Hold out part of a network, predict it by graph attention over the rest, and score it."""
    from perturbflow import grn  # heavy: torch

    try:
        for path in (out, scores_out):
            if path is not None and path.exists() and not overwrite:
                raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
        dataset = _read_options(
            condition_key, control, gene_key, separator, layer, keep_unassigned, unassigned
        ).read(data)
        genes = list(dataset.genes)
        known = grn.read_network(
            dataset if network == "data" else network, genes=genes, data_dir=data_dir
        )
        feature_config = grn.FeatureConfig(seed=seed, priors=str(data_dir) if data_dir else None)
        table = grn.gene_features(features, dataset, genes=genes, config=feature_config)
        config = grn.CompletionConfig(held_out=held_out, epochs=epochs, seed=seed)
        with console.status(f"training graph attention on {len(known)} edges"):
            result = grn.complete_network(known, table, config)
        metrics = result.metrics.assign(features=features, network=network, seed=seed)
        write_csv(metrics, out, overwrite=overwrite)
        if scores_out is not None:
            write_csv(result.scores, scores_out, overwrite=overwrite)
    except (ValueError, KeyError, FileNotFoundError, FileExistsError) as error:
        _fail(error)
    console.print(
        f"held-out edges of {network} with {features} features: AUROC {result.auroc:.3f}, "
        f"AUPRC {result.auprc:.3f} → [bold]{out}[/]"
    )


@grn_app.command("demo")
def grn_demo(
    out: Annotated[Path, typer.Option(help="New folder for edges, metrics and GraphML.")] = Path(
        "runs/grn_demo"
    ),
    network: Annotated[
        str,
        typer.Option(
            help="Regulon topology of the simulated screen: collectri, dorothea or a CSV."
        ),
    ] = "dorothea",
    seed: Annotated[int, typer.Option(help="Seed of the simulation.")] = 1,
    genes: Annotated[int, typer.Option(help="Genes of the simulated sub-network.")] = 80,
    singles: Annotated[
        int, typer.Option(help="Knocked-out regulators (as many doubles are simulated too).")
    ] = 15,
    cells: Annotated[int, typer.Option(help="Cells per knock-out.")] = 60,
    data_dir: DataDir = None,
    overwrite: Overwrite = False,
) -> None:
    """Simulate a small knock-out screen with a known network, infer and score its edges.

    Needs the sim extra (sergio-rs). Writes screen.h5ad, edges_<method>.csv, metrics.csv and
    screen_edges.graphml into OUT and prints AUPRC, AUPRC ratio and early precision per method.
    """
    from perturbflow import grn  # heavy: torch

    try:
        folder = prepare_output_dir(out, overwrite=overwrite)
        config = GRNScreenConfig(
            network=network, n_genes=genes, n_regulators=max(singles, genes // 4),
            n_singles=singles, n_doubles=singles, n_cells=cells, n_control_cells=150, seed=seed,
        )  # fmt: skip
        with console.status("simulating a knock-out screen"):
            adata = simulate_grn_screen(config, data_dir=data_dir)
        write_h5ad(adata, folder / "screen.h5ad", overwrite=True)
        dataset = read(adata)
        genes = list(dataset.genes)
        truth = grn.read_network(dataset, genes=genes)
        cells = dataset.expression(list(dataset.conditions))
        with console.status("inferring edges"):
            found = {
                "screen": grn.screen_edges(dataset),
                "regression": grn.regression_edges(dataset),
            }
            regulators = sorted(set(found["screen"]["source"]))
            found["correlation"] = grn.correlation_edges(cells, genes, regulators)
        tables = []
        for method, edges in found.items():
            grn.write_edges_csv(edges, folder / f"edges_{method}.csv", overwrite=True)
            tables.append(
                grn.score_edges(edges, truth, genes=genes, regulators=regulators, method=method)
            )
        grn.write_graphml(found["screen"], folder / "screen_edges.graphml", overwrite=True)
        metrics = pd.concat(tables, ignore_index=True)
        write_csv(metrics, folder / "metrics.csv", overwrite=True)
        mark_complete(folder)
    except (ValueError, KeyError, FileNotFoundError, FileExistsError, ImportError) as error:
        _fail(error)
    console.print(_grn_table(metrics, f"edges of a simulated screen ({network}, seed {seed})"))
    console.print(f"results written to [bold]{folder}[/]")


def _grn_table(metrics: pd.DataFrame, title: str) -> Table:
    overall = metrics[metrics["regulator"] == "all"]
    shown = [
        m
        for m in ("auprc", "auprc_ratio", "auroc", "epr", "epr_pvalue", "n_true")
        if m in set(overall["metric"])
    ]
    table = Table(title=title)
    table.add_column("method")
    for metric in shown:
        table.add_column(metric, justify="right")
    for method, group in overall.groupby("method", sort=False):
        values = group.set_index("metric")["value"]
        table.add_row(method, *[f"{values[m]:.3g}" if m in values else "" for m in shown])
    return table


def _check_choice(flag: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{flag} must be one of {', '.join(allowed)}; got {value!r}")


@app.command()
def design(
    data: Annotated[Path, typer.Argument(help="The screen (.h5ad) with measured singles.")],
    out: Annotated[Path, typer.Option(help="Ranked CSV of untested pairs.")],
    model: Annotated[
        str, typer.Option(help="Model predicting the doubles (it must learn interactions).")
    ] = "combinator",
    seeds: Annotated[
        str, typer.Option(help="Ensemble members (bootstrap + model seed), e.g. 0,1,2.")
    ] = "0,1,2",
    kappa: Annotated[
        float, typer.Option(help="Weight of uncertainty against predicted interaction.")
    ] = 1.0,
    genes: Annotated[
        str | None, typer.Option(help="Only pairs of these genes (comma-separated).")
    ] = None,
    top: Annotated[int, typer.Option(help="Rows printed (the CSV has every pair).")] = 15,
    condition_key: ConditionKey = "condition",
    control: Control = None,
    gene_key: GeneKey = None,
    separator: Separator = "+",
    layer: Layer = None,
    context_key: ContextKey = None,
    batch_key: BatchKey = None,
    keep_unassigned: KeepUnassigned = False,
    unassigned: Unassigned = None,
    overwrite: Overwrite = False,
) -> None:
    """Rank untested gene pairs by predicted interaction and uncertainty: what to measure next.

    perturbflow.eval.design explains the score; benchmarks/design.py measures the ranking.
    """
    from perturbflow.eval.design import candidate_pairs, rank_pairs  # heavy: torch
    from perturbflow.eval.loop import RunSpec

    try:
        if out.exists() and not overwrite:
            raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
        dataset = _read_options(
            condition_key,
            control,
            gene_key,
            separator,
            layer,
            keep_unassigned,
            unassigned,
            context_key,
            batch_key,
        ).read(data)
        chosen = [g.strip() for g in genes.split(",")] if genes else None
        with console.status(f"fitting {len(seed_list)} {model} models"):
            table = rank_pairs(
                dataset,
                RunSpec(model, model),
                candidates=candidate_pairs(dataset, chosen),
                seeds=seed_list,
                kappa=kappa,
            )
        write_csv(table, out, overwrite=overwrite)
    except (ValueError, KeyError, FileNotFoundError, FileExistsError) as error:
        _fail(error)
    shown = Table(title=f"untested pairs ranked by {model} (kappa {kappa})")
    for column in ("rank", "condition", "score", "interaction", "uncertainty", "kind"):
        shown.add_column(column)
    for _, row in table.head(top).iterrows():
        shown.add_row(
            str(row["rank"]),
            row["condition"],
            f"{row['score']:.3f}",
            f"{row['interaction']:.3f}",
            f"{row['uncertainty']:.3f}",
            row["kind"],
        )
    console.print(shown)
    console.print(f"{len(table)} pairs written to [bold]{out}[/]")


@app.command()
def guides(
    data: Annotated[Path, typer.Argument(help="The screen (.h5ad) with a guide per cell.")],
    guide_key: Annotated[
        str,
        typer.Option(help="obs column of each cell's guide (--condition-key names its gene)."),
    ],
    out: Annotated[Path, typer.Option(help="CSV of each guide's knockdown of its target.")],
    min_knockdown: Annotated[
        float,
        typer.Option(help="Fraction of the target removed for a guide to count as efficient."),
    ] = 0.3,
    alpha: Annotated[
        float,
        typer.Option(
            help="Benjamini-Hochberg FDR (one-sided rank test) an efficient guide must reach."
        ),
    ] = 0.05,
    guide_map: GuideMap = None,
    condition_key: ConditionKey = "condition",
    control: Control = None,
    gene_key: GeneKey = None,
    separator: Separator = "+",
    layer: Layer = None,
    keep_unassigned: KeepUnassigned = False,
    unassigned: Unassigned = None,
    overwrite: Overwrite = False,
) -> None:
    """Which guides worked: each guide's knockdown of its own target gene against control cells.

    perturbflow.data.guides.guide_efficiency explains the columns.
    """
    try:
        if out.exists() and not overwrite:
            raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
        dataset = _read_options(
            condition_key,
            control,
            gene_key,
            separator,
            layer,
            keep_unassigned,
            unassigned,
            guide_key=guide_key,
            guide_map=guide_map,
        ).read(data)
        table = guide_efficiency(dataset, min_knockdown=min_knockdown, alpha=alpha)
        write_csv(table, out, overwrite=overwrite)
    except (ValueError, KeyError, FileNotFoundError, FileExistsError) as error:
        _fail(error)
    # A guide on a combination has a row per target gene.
    rows = "guides" if table["guide"].is_unique else "guide-target pairs"
    console.print(
        f"{int(table['efficient'].sum())} of {len(table)} {rows} efficient (knockdown ≥ "
        f"{min_knockdown:g}, FDR ≤ {alpha:g}), {int((~table['target_measured']).sum())} with an "
        f"unmeasured target; written to [bold]{escape(str(out))}[/]"
    )


@app.command("datasets")
def list_datasets() -> None:
    """List the registered datasets and whether they are available here."""
    frame = dataset_table()
    for _, row in frame.iterrows():
        mark = "[green]available[/]" if row["available"] else "[dim]not here[/]"
        console.print(
            f"[bold]{row['name']}[/] ({row['perturbation_type']}, {mark}): {row['description']}"
        )


@app.command("models")
def list_models() -> None:
    """List the registered models."""
    from perturbflow.models import MODELS  # heavy: torch

    for name, cls in sorted(MODELS.items()):
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        console.print(f"[bold]{name}[/]: {doc}")


peers_app = typer.Typer(
    help="Peer models in environments of their own (.venv-peers/NAME; PERTURBFLOW_PEERS_DIR "
    "moves them): install one, list them.",
    no_args_is_help=True,
)
app.add_typer(peers_app, name="peers")


@peers_app.command("install")
def peers_install(
    name: Annotated[str, typer.Argument(help="The peer: cellflow or gears.")],
) -> None:
    """Create (or remake) a peer's environment with its own pins, CPU builds only.

    Torch, when the peer needs it, is installed first from PERTURBFLOW_TORCH_SPEC (default
    torch==2.13.0) so that no dependency pulls a CUDA build.
    """
    from perturbflow.models.peers.envs import PEER_ENVS, PeerEnvError, install_env

    if name not in PEER_ENVS:
        _fail(ValueError(f"unknown peer {name!r}; choose one of {', '.join(PEER_ENVS)}"))
    try:
        with console.status(f"installing the {name} peer") as status:
            env = install_env(name, progress=lambda step: status.update(escape(step)))
    except PeerEnvError as error:
        _fail(error)
    console.print(f"[bold]{name}[/] peer ready in {env.path} ({env.version})")


@peers_app.command("list")
def peers_list() -> None:
    """List the peers: where each runs, whether its environment exists, its version."""
    from perturbflow.models.peers import peer_status
    from perturbflow.models.peers.envs import env_status

    for name, (available, line) in peer_status().items():
        env = env_status(name)
        mark = "[green]available[/]" if available else "[dim]not available[/]"
        unused = f"; no environment at {env.path}" if available and not env.exists else ""
        console.print(f"[bold]{name}[/] ({mark}): {escape(line + unused)}")


def _read_yaml(path: Path) -> dict:
    if not path.exists():
        raise FileNotFoundError(f"{path}: config file not found")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML ({error})") from error
    if not isinstance(values, dict):
        raise ValueError(
            f"{path}: expected a mapping of option: value, got {type(values).__name__}"
        )
    return values
