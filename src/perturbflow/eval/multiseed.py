"""Benchmarks over several seeds: resumable runs and the summary a method developer reads.

:func:`run_benchmark` fits every model on every seed's split, evaluates every held-out condition
and the split-half noise ceiling, and appends each finished (model, seed) cell to
``results.csv`` at once, so ``resume=True`` skips what an interrupted run already finished.
:func:`benchmark_summary` turns the long table into mean ± sd over seeds per subgroup, model and
metric, with win rate and paired difference against the additive baseline and the fraction of
the noise ceiling reached.

Context splits (``cross_cell_line``) fit on one dataset and score on another: each seed's
:func:`perturbflow.data.contexts.cross_cell_line_task` gives the cells to fit on (all lines,
centred on their own control, minus the target line's held-out cells), the target line's real
cells to score against, and the shift that moves predictions into that line's space; everything
else is the same loop.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from perturbflow.data.contexts import cross_cell_line_task
from perturbflow.data.io import PerturbationDataset
from perturbflow.data.outputs import write_csv
from perturbflow.data.splits import CROSS_CELL_LINE, Split, make_split
from perturbflow.eval.benchmark import resolve_models, seeded_config
from perturbflow.eval.de import de_genes
from perturbflow.eval.evaluate import NOISE_CEILING_MODEL, RESULT_COLUMNS, evaluate, noise_ceiling
from perturbflow.eval.metrics import METRICS
from perturbflow.models.base import get_model

logger = logging.getLogger(__name__)

REFERENCE_MODEL = "additive"
TIMING_COLUMNS = ("model", "seed", "fit_s", "predict_s")
CROSSCHECK_FILE = "celleval_crosscheck.csv"
SUMMARY_COLUMNS = (
    "subgroup",
    "model",
    "metric",
    "mean",
    "sd",
    "n_seeds",
    "n_conditions",
    "win_rate_vs_additive",
    "paired_diff_vs_additive",
    "fraction_of_ceiling",
)


@dataclass(frozen=True)
class BenchmarkResult:
    """Long results, their summary, timings, and each seed's split and evaluation data.

    ``eval_datasets[seed]`` is the data that seed's predictions were scored against: the input
    dataset, or for ``cross_cell_line`` the target line's cells.
    """

    results: pd.DataFrame
    summary: pd.DataFrame
    timings: pd.DataFrame
    splits: dict[int, Split]
    eval_datasets: dict[int, PerturbationDataset] = field(default_factory=dict)


def run_benchmark(
    dataset: PerturbationDataset,
    out: Path,
    *,
    split_kind: str,
    seeds: Sequence[int],
    models: str | Sequence[str] = "all",
    n_cells: int = 100,
    resume: bool = False,
    split_params: dict | None = None,
    model_options: dict[str, dict] | None = None,
    progress: Callable[[str], None] | None = None,
) -> BenchmarkResult:
    """Fit, predict and evaluate every model on every seed; write results as they finish.

    ``out`` must exist. Files: ``results.csv`` (long format), ``timings.csv``,
    ``splits/<kind>_seed<k>.json``, ``summary.csv``, ``predictions/<model>_seed<k>.csv``
    (predicted mean delta per test condition), ``programs/<model>_seed<k>.csv`` for models
    that learn gene programs, and — when cell-eval is installed — ``celleval_crosscheck.csv``
    (cell-eval's values of the shared metrics next to ours, per condition). With ``resume`` the (model, seed) cells
    already in ``results.csv`` are kept and not recomputed; their splits must match.
    ``model_options`` maps a model name to config options (as in a YAML file), e.g.
    ``{"scbig": {"flow_steps": 200}}``; each seed's run sets the config's ``seed``.
    With ``split_kind="cross_cell_line"``, ``dataset`` needs a cell-type column; models fit on
    each seed's line-centred training cells, their predictions are moved into the target line's
    space and scored, with the noise ceiling, on the target line's cells (``split_params`` go to
    :func:`perturbflow.data.contexts.cross_cell_line_task`).
    """
    names = resolve_models(models)
    results_path, timings_path = out / "results.csv", out / "timings.csv"
    done = _read_existing(results_path) if resume else pd.DataFrame(columns=RESULT_COLUMNS)
    timings: list[dict] = (
        pd.read_csv(timings_path).to_dict("records") if resume and timings_path.exists() else []
    )
    finished = set(zip(done["model"], done["seed"].astype(int), strict=True))
    splits_dir = out / "splits"
    splits_dir.mkdir(exist_ok=True)
    splits: dict[int, Split] = {}
    eval_datasets: dict[int, PerturbationDataset] = {}
    frames = [done]
    for seed in seeds:
        fit_data, eval_data, split, to_eval_space = _seed_task(
            dataset, split_kind, seed, split_params or {}
        )
        split_path = splits_dir / f"{split_kind}_seed{seed}.json"
        if resume and split_path.exists() and Split.load(split_path) != split:
            raise ValueError(
                f"{split_path} differs from the split this run would make; "
                "resume with the same data and options, or start a new --out"
            )
        split.save(split_path, overwrite=True)
        splits[seed] = split
        eval_datasets[seed] = eval_data
        todo = [n for n in names if (n, seed) not in finished]
        ceiling_needed = (NOISE_CEILING_MODEL, seed) not in finished
        if not todo and not ceiling_needed:
            logger.info("seed %d: all models already evaluated (resume)", seed)
            continue
        de = de_genes(eval_data, list(split.test))
        for name in todo:
            if progress is not None:
                progress(f"seed {seed}: {name}")
            start = time.perf_counter()
            options = (model_options or {}).get(name)
            model = get_model(name, seeded_config(name, seed, options)).fit(fit_data, split)
            fitted = time.perf_counter()
            predictions = to_eval_space(model.predict(split.test, n_cells=n_cells, seed=seed))
            predicted = time.perf_counter()
            frames.append(evaluate(predictions, eval_data, split, model=name, seed=seed, de=de))
            _save_model_outputs(out, name, seed, predictions, eval_data, model)
            _crosscheck(out, predictions, eval_data, split, name, seed)
            timings.append(
                {
                    "model": name,
                    "seed": seed,
                    "fit_s": fitted - start,
                    "predict_s": predicted - fitted,
                }
            )
            _checkpoint(frames, timings, results_path, timings_path)
            logger.info(
                "seed %d %s: fit %.1fs, predict %.1fs",
                seed,
                name,
                fitted - start,
                predicted - fitted,
            )
        if ceiling_needed:
            frames.append(noise_ceiling(eval_data, split, seed=seed, de=de))
            _checkpoint(frames, timings, results_path, timings_path)
    results = pd.concat([f for f in frames if len(f)], ignore_index=True)
    summary = benchmark_summary(results)
    write_csv(summary, out / "summary.csv", overwrite=True)
    return BenchmarkResult(
        results=results,
        summary=summary,
        timings=pd.DataFrame(timings),
        splits=splits,
        eval_datasets=eval_datasets,
    )


def _seed_task(
    dataset: PerturbationDataset, split_kind: str, seed: int, split_params: dict
) -> tuple[PerturbationDataset, PerturbationDataset, Split, Callable[[ad.AnnData], ad.AnnData]]:
    """Data to fit on, data to score against, the split, and predictions' map between the two.

    The map is the identity except for context splits, whose models fit in a line-centred space.
    """
    if split_kind == CROSS_CELL_LINE:
        task = cross_cell_line_task(dataset, seed=seed, **split_params)
        return task.fit, task.evaluation, task.split, task.to_target_line
    split = make_split(split_kind, dataset.conditions, seed=seed, **split_params)
    return dataset, dataset, split, _same_space


def _same_space(predictions: ad.AnnData) -> ad.AnnData:
    return predictions


def _crosscheck(out: Path, predictions, dataset, split, name: str, seed: int) -> None:
    """Append cell-eval's values of the shared metrics next to ours (when cell-eval is present)."""
    if importlib.util.find_spec("cell_eval") is None:
        return
    from perturbflow.eval.celleval import celleval_crosscheck

    table = celleval_crosscheck(predictions, dataset, split, model=name, seed=seed)
    path = out / CROSSCHECK_FILE
    if path.exists():
        previous = pd.read_csv(path)
        previous = previous[~((previous["model"] == name) & (previous["seed"] == seed))]
        table = pd.concat([previous, table], ignore_index=True)
    write_csv(table, path, overwrite=True)


def _save_model_outputs(out: Path, name: str, seed: int, predictions, dataset, model) -> None:
    """Predicted pseudobulk deltas (and gene programs, when the model has them) for the report."""
    from perturbflow.data.io import CONDITION_COLUMN

    labels = predictions.obs[CONDITION_COLUMN].astype(str).to_numpy()
    matrix = np.asarray(predictions[:, dataset.genes].X)
    control = dataset.control_expression().mean(axis=0)
    names = list(dict.fromkeys(labels))
    deltas = pd.DataFrame(
        np.vstack([matrix[labels == n].mean(axis=0) - control for n in names]),
        index=pd.Index(names, name="condition"),
        columns=dataset.genes,
    )
    folder = out / "predictions"
    folder.mkdir(exist_ok=True)
    write_csv(deltas.reset_index(), folder / f"{name}_seed{seed}.csv", overwrite=True)
    programs = getattr(model, "programs_", None)
    if isinstance(programs, pd.DataFrame):
        (out / "programs").mkdir(exist_ok=True)
        write_csv(programs, out / "programs" / f"{name}_seed{seed}.csv", overwrite=True)


def _read_existing(path: Path) -> pd.DataFrame:
    if not path.exists():
        return pd.DataFrame(columns=RESULT_COLUMNS)
    table = pd.read_csv(path)
    missing = set(RESULT_COLUMNS) - set(table.columns)
    if missing:
        raise ValueError(f"{path}: cannot resume, columns {sorted(missing)} are missing")
    return table


def _checkpoint(frames, timings, results_path: Path, timings_path: Path) -> None:
    results = pd.concat([f for f in frames if len(f)], ignore_index=True)
    write_csv(results, results_path, overwrite=True)
    write_csv(pd.DataFrame(timings, columns=TIMING_COLUMNS), timings_path, overwrite=True)


def benchmark_summary(results: pd.DataFrame, reference: str = REFERENCE_MODEL) -> pd.DataFrame:
    """Mean ± sd over seeds of per-seed subgroup means, with comparisons to ``reference``.

    - ``win_rate_vs_additive``: over (condition, seed) pairs both models scored, the fraction
      where the model is strictly better than the reference (ties count half);
    - ``paired_diff_vs_additive``: mean of (model − reference) over those pairs, signed so that
      positive is better for every metric;
    - ``fraction_of_ceiling``: the model's mean divided by the noise ceiling's for metrics where
      higher is better, and ceiling / model where lower is better (1 = as good as the data allow).
    """
    table = results.dropna(subset=["value"])
    per_seed = table.groupby(["subgroup", "model", "metric", "seed"])["value"].mean()
    stats = per_seed.groupby(["subgroup", "model", "metric"]).agg(["mean", "std", "count"])
    stats.columns = ["mean", "sd", "n_seeds"]
    conditions = table.groupby(["subgroup", "model", "metric"])["condition"].nunique()
    stats["n_conditions"] = conditions
    keyed = table.set_index(["subgroup", "metric", "condition", "seed"])
    wins, diffs = {}, {}
    if reference in set(table["model"]):
        ref = keyed[keyed["model"] == reference]["value"]
        for model in table["model"].unique():
            mine = keyed[keyed["model"] == model]["value"]
            joined = pd.concat([mine.rename("model"), ref.rename("ref")], axis=1, join="inner")
            for (subgroup, metric), rows in joined.groupby(level=["subgroup", "metric"]):
                sign = 1.0 if METRICS[metric].higher_is_better else -1.0
                gain = sign * (rows["model"] - rows["ref"])
                wins[(subgroup, model, metric)] = float(((gain > 0) + 0.5 * (gain == 0)).mean())
                diffs[(subgroup, model, metric)] = float(gain.mean())
    stats["win_rate_vs_additive"] = pd.Series(wins)
    stats["paired_diff_vs_additive"] = pd.Series(diffs)
    ceiling = (
        stats.xs(NOISE_CEILING_MODEL, level="model")["mean"]
        if NOISE_CEILING_MODEL in set(table["model"])
        else None
    )
    fractions = {}
    if ceiling is not None:
        for (subgroup, model, metric), row in stats.iterrows():
            top = ceiling.get((subgroup, metric), np.nan)
            if METRICS[metric].higher_is_better:
                fractions[(subgroup, model, metric)] = row["mean"] / top if top else np.nan
            else:
                fractions[(subgroup, model, metric)] = top / row["mean"] if row["mean"] else np.nan
    stats["fraction_of_ceiling"] = pd.Series(fractions)
    return stats.reset_index()[list(SUMMARY_COLUMNS)]
