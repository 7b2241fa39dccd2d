"""The one run loop: fit each run on each seed's split, predict the held-out conditions, evaluate.

The demo, ``perturbflow benchmark``, the ablation and the speed scripts are this loop with
different :class:`RunSpec` lists. A run is a label, a registered model name and its options;
no model is special-cased. What a report needs to know about the runs (which model and options,
which are peers and their package version, which wrote gene programs) is written to ``runs.json``
next to the results. A peer that fails (:data:`~perturbflow.models.peers.PEER_FAILURES`: a missing
or broken environment, an adapter that fails, a test condition it cannot predict) is logged and
listed under ``failed`` (seed → message) in ``runs.json``; the other runs go on.

With an output folder, every finished (run, seed) cell is appended to ``results.csv`` at once,
so ``resume=True`` skips what an interrupted run already finished. Files: ``results.csv`` (long
format), ``timings.csv``, ``splits/<kind>_seed<k>.json``, ``summary.csv``, ``runs.json``,
``predictions/<label>_seed<k>.csv`` (predicted mean delta per test condition),
``programs/<label>_seed<k>.csv`` for models that learn gene programs, and — when cell-eval is
installed — ``celleval_crosscheck.csv``.

With ``train_cells`` levels (e.g. ``(10, 25, None)``), every run is fitted once per level on
the seed's training conditions cut to that many cells each
(:func:`perturbflow.data.subsample.subsample_training_cells`), always scored against the same
full test cells; results, summary and timings then carry a ``train_cells`` column (``"10"``,
``"all"``) and per-level files end in ``_cells<n>`` (the ``all`` level keeps the plain names).

Context splits (``cross_cell_line``) fit on one dataset and score on another: each seed's
:func:`perturbflow.data.contexts.cross_cell_line_task` gives the cells to fit on (all lines,
centred on their own control, minus the target line's held-out cells), the target line's real
cells to score against, and the shift that moves predictions into that line's space; everything
else is the same loop.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from perturbflow.data.contexts import cross_cell_line_task
from perturbflow.data.io import CONDITION_COLUMN, PerturbationDataset
from perturbflow.data.outputs import write_atomic, write_csv
from perturbflow.data.splits import CONTEXT_KINDS, GUIDE_KINDS, Split, make_split
from perturbflow.data.subsample import (
    ALL_CELLS,
    parse_train_cells,
    subsample_training_cells,
    train_cells_label,
)
from perturbflow.eval.de import de_genes
from perturbflow.eval.evaluate import (
    NOISE_CEILING_MODEL,
    RESULT_COLUMNS,
    condition_sizes,
    evaluate,
    noise_ceiling,
    real_de_table,
)
from perturbflow.eval.summary import benchmark_summary
from perturbflow.models.base import MODELS, config_to_dict, get_model, make_config, model_class
from perturbflow.models.peers import PEER_FAILURES, PEERS, missing_peer_hint

logger = logging.getLogger(__name__)

TIMING_COLUMNS = ("model", "seed", "fit_s", "predict_s")
CROSSCHECK_FILE = "celleval_crosscheck.csv"
RUNS_FILE = "runs.json"
TRAIN_CELLS_COLUMN = "train_cells"


@dataclass(frozen=True)
class Seeds:
    """The seeds of one replicate. ``split`` draws the held-out conditions and names the
    replicate (the ``seed`` column of every table); ``model`` seeds model fitting and
    ``sampling`` the predicted cells and the evaluation's subsampling (both default to ``split``),
    so each can be varied alone."""

    split: int
    model: int | None = None
    sampling: int | None = None

    @property
    def model_seed(self) -> int:
        return self.split if self.model is None else self.model

    @property
    def sampling_seed(self) -> int:
        return self.split if self.sampling is None else self.sampling

    @classmethod
    def coerce(cls, value: Seeds | int) -> Seeds:
        return value if isinstance(value, Seeds) else cls(split=int(value))


@dataclass(frozen=True)
class RunSpec:
    """One run: ``label`` (its name in every table), a registered ``model`` name (``ridge[go]``
    included) and its config ``options`` (field → value, as in a YAML file). The config's
    ``seed`` is the replicate's model seed unless the options set it."""

    label: str
    model: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def config(self, seed: int):
        config_class = getattr(model_class(self.model), "config_class", None)
        values = dict(self.options)
        if config_class is not None and "seed" in {
            f.name for f in dataclasses.fields(config_class)
        }:
            values.setdefault("seed", seed)
        return make_config(self.model, values)


@dataclass(frozen=True)
class RunResult:
    """Long results, their summary, timings, and each seed's split and evaluation data.

    ``eval_datasets[seed]`` is the data that seed's predictions were scored against: the input
    dataset, or for ``cross_cell_line`` the target line's cells. ``runs`` is the metadata written
    to ``runs.json``.
    """

    results: pd.DataFrame
    summary: pd.DataFrame
    timings: pd.DataFrame
    splits: dict[int, Split]
    eval_datasets: dict[int, PerturbationDataset] = field(default_factory=dict)
    runs: dict[str, dict] = field(default_factory=dict)


def resolve_models(models: str | Sequence[str]) -> list[str]:
    """Validated model names from a comma list or sequence; ``all`` → every built-in model.

    Peers from other packages are slow and need their extra, so ``all`` leaves them out; name
    them next to it (e.g. ``all,<peer>``) to run them in the same benchmark.
    """
    tokens = [m.strip() for m in models.split(",")] if isinstance(models, str) else list(models)
    builtin = sorted(name for name in MODELS if name not in PEERS)
    names = [name for token in tokens for name in (builtin if token == "all" else [token])]
    not_installed = [name for name in names if name in PEERS and name not in MODELS]
    if not_installed:
        raise KeyError(
            f"peer model(s) {not_installed} are not installed; "
            + "; ".join(f"{name}: {missing_peer_hint(name)}" for name in not_installed)
        )
    unknown = [name for name in names if not _known(name)]
    if unknown or not names:
        raise KeyError(
            f"unknown model(s) {unknown}; registered models: {', '.join(sorted(MODELS))} "
            "(or 'all' for every built-in model)"
        )
    return list(dict.fromkeys(names))


def _known(name: str) -> bool:
    try:
        make_config(name, {})
    except (KeyError, ValueError):
        return False
    return True


def model_runs(
    models: str | Sequence[str], options: Mapping[str, Mapping[str, Any]] | None = None
) -> list[RunSpec]:
    """One run per model name (``all`` expanded), labelled by the name, with ``options[name]``."""
    options = options or {}
    return [RunSpec(name, name, dict(options.get(name, {}))) for name in resolve_models(models)]


def fit_model(spec: RunSpec, dataset: PerturbationDataset, split: Split, seed: int):
    """``spec``'s model with model seed ``seed``, fitted on ``split``'s training conditions: the
    one place a run's model is fitted (the loop, ensembles, design and benchmark scripts)."""
    return get_model(spec.model, spec.config(seed)).fit(dataset, split)


def run(
    dataset: PerturbationDataset,
    split_kind: str,
    runs: Sequence[RunSpec],
    seeds: Sequence[Seeds | int],
    *,
    out: Path | None = None,
    n_cells: int = 100,
    resume: bool = False,
    split_params: dict | None = None,
    noise_ceiling_row: bool = True,
    score: bool = True,
    progress: Callable[[str], None] | None = None,
    on_fitted: Callable[[RunSpec, Seeds, Any], None] | None = None,
    train_cells: Sequence[int | str | None] | None = None,
    de_overlap: bool = False,
) -> RunResult:
    """Fit, predict and evaluate every run on every seed; with ``out``, write results as they finish.

    ``out`` must exist when given. ``resume`` keeps the (run, seed) cells already in
    ``out/results.csv``; their splits must match. ``score=False`` only fits and predicts (speed
    measurements). ``on_fitted(spec, seeds, model)`` is called after each fit, for callers that
    read a fitted model's attributes. ``progress(text)`` is called before each step; the library
    itself never prints. With ``split_kind="cross_cell_line"``, ``dataset`` needs a cell-type
    column (``split_params`` go to :func:`perturbflow.data.contexts.cross_cell_line_task`).
    ``train_cells`` lists levels of training cells per condition (ints, ``"all"``/``None``):
    each run is fitted at each level, the subsample drawn with the replicate's sampling seed.
    ``de_overlap`` adds cell-eval's DE overlap (``overlap_at_*``) to every model's and the noise
    ceiling's scores; the real cells' DE tests run once per seed.
    """
    labels = [spec.label for spec in runs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"run labels must be unique, got {labels}")
    replicates = [Seeds.coerce(value) for value in seeds]
    levels = parse_train_cells(train_cells) if train_cells is not None else None
    if levels is not None and split_kind in CONTEXT_KINDS:
        raise ValueError(
            f"train_cells is not supported for the {split_kind} split: its training cells are "
            "pooled over contexts; use a split over one dataset (combo, simulation, ...)"
        )
    done = _read_existing(out / "results.csv", levels) if (out and resume) else _empty_results()
    timings_path = out / "timings.csv" if out else None
    timings: list[dict] = (
        pd.read_csv(timings_path).to_dict("records")
        if resume and timings_path is not None and timings_path.exists()
        else []
    )
    finished = set(
        zip(done["model"], done["seed"].astype(int), _level_column(done, levels), strict=True)
    )
    metadata = _run_metadata(runs, out if resume else None)
    timing_columns = TIMING_COLUMNS if levels is None else (*TIMING_COLUMNS, TRAIN_CELLS_COLUMN)
    if levels is not None:
        for meta in metadata.values():
            meta[TRAIN_CELLS_COLUMN] = [train_cells_label(level) for level in levels]
    splits: dict[int, Split] = {}
    eval_datasets: dict[int, PerturbationDataset] = {}
    frames = [done]
    for replicate in replicates:
        seed = replicate.split
        fit_data, eval_data, split, to_eval_space = _seed_task(
            dataset, split_kind, seed, split_params or {}
        )
        if out is not None:
            _save_split(out, split, split_kind, seed, resume)
        splits[seed] = split
        eval_datasets[seed] = eval_data
        tags = [None] if levels is None else [train_cells_label(level) for level in levels]
        todo = [
            (level, tag, spec)
            for level, tag in zip(levels or [None], tags, strict=True)
            for spec in runs
            if (spec.label, seed, tag) not in finished
        ]
        ceilings_needed = [
            tag
            for tag in tags
            if score and noise_ceiling_row and (NOISE_CEILING_MODEL, seed, tag) not in finished
        ]
        if not todo and not ceilings_needed:
            logger.info("seed %d: all runs already evaluated (resume)", seed)
            continue
        de = de_genes(eval_data, list(split.test)) if score else None
        real_de = (
            real_de_table(eval_data, list(split.test)) if score and de_overlap and todo else None
        )
        level_data: dict[str | None, PerturbationDataset] = {}
        for level, tag, spec in todo:
            if tag not in level_data:  # the seed's draw, the same for every run of the level
                level_data = {
                    tag: subsample_training_cells(
                        fit_data, split, level, seed=replicate.sampling_seed
                    )
                }
            if progress is not None:
                progress(f"seed {seed}{_at(tag)}: {spec.label}")
            start = time.perf_counter()
            try:
                model = fit_model(spec, level_data[tag], split, replicate.model_seed)
                fitted = time.perf_counter()
                predictions = to_eval_space(
                    model.predict(split.test, n_cells=n_cells, seed=replicate.sampling_seed)
                )
            except PEER_FAILURES as error:
                # A peer's missing or broken environment must not cost the other runs.
                _record_failure(metadata[spec.label], seed, tag, error)
                if out is not None:
                    _checkpoint(frames, timings, metadata, out, timing_columns)
                continue
            predicted = time.perf_counter()
            version = getattr(model, "peer_version_", None)
            if version is not None:
                metadata[spec.label]["version"] = str(version)
            if on_fitted is not None:
                on_fitted(spec, replicate, model)
            metadata[spec.label]["programs"] |= isinstance(
                getattr(model, "programs_", None), pd.DataFrame
            )
            if score:
                frames.append(
                    _tagged(
                        evaluate(
                            predictions,
                            eval_data,
                            split,
                            model=spec.label,
                            seed=seed,
                            de=de,
                            sampling_seed=replicate.sampling_seed,
                            de_overlap=de_overlap,
                            real_de=real_de,
                        ),
                        tag,
                    )
                )
            timings.append(
                {
                    "model": spec.label,
                    "seed": seed,
                    "fit_s": fitted - start,
                    "predict_s": predicted - fitted,
                }
                | ({} if tag is None else {TRAIN_CELLS_COLUMN: tag})
            )
            if out is not None:
                stem = f"{spec.label}_seed{seed}" + _file_suffix(tag)
                _save_model_outputs(out, stem, predictions, eval_data, model)
                # The metric cross-check needs one level: the full data when it ran.
                if score and tag in (None, ALL_CELLS):
                    _crosscheck(out, predictions, eval_data, split, spec.label, seed)
                _checkpoint(frames, timings, metadata, out, timing_columns)
            logger.info(
                "seed %d%s %s: fit %.1fs, predict %.1fs",
                seed,
                _at(tag),
                spec.label,
                fitted - start,
                predicted - fitted,
            )
        if ceilings_needed:
            ceiling = noise_ceiling(
                eval_data,
                split,
                seed=seed,
                de=de,
                sampling_seed=replicate.sampling_seed,
                de_overlap=de_overlap,
            )
            # The test cells are the same at every level, and so is the ceiling.
            frames.extend(_tagged(ceiling, tag) for tag in ceilings_needed)
            if out is not None:
                _checkpoint(frames, timings, metadata, out, timing_columns)
    results = _concat(frames)
    sizes = (
        pd.concat(
            [
                condition_sizes(eval_datasets[seed], list(split.test))
                for seed, split in splits.items()
            ],
            ignore_index=True,
        )
        if splits
        else None
    )
    summary = _summary(results, sizes, levels) if len(results) else pd.DataFrame()
    if out is not None and len(results):
        write_csv(summary, out / "summary.csv", overwrite=True)
    return RunResult(
        results=results,
        summary=summary,
        timings=pd.DataFrame(timings, columns=timing_columns),
        splits=splits,
        eval_datasets=eval_datasets,
        runs=metadata,
    )


def read_runs(out: Path) -> dict[str, dict]:
    """The run metadata a finished or interrupted run wrote (empty when there is none)."""
    path = out / RUNS_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def _run_metadata(runs: Sequence[RunSpec], previous_out: Path | None) -> dict[str, dict]:
    previous = read_runs(previous_out) if previous_out is not None else {}
    metadata = {}
    for spec in runs:
        config = spec.config(0)
        options = {k: v for k, v in config_to_dict(config).items() if k != "seed"}
        metadata[spec.label] = {
            "model": spec.model,
            "options": _jsonable(options),
            "peer": spec.model.split("[", 1)[0] in PEERS,
            "programs": bool(previous.get(spec.label, {}).get("programs", False)),
        }
        if "version" in previous.get(spec.label, {}):  # a peer that ran before a resume
            metadata[spec.label]["version"] = previous[spec.label]["version"]
    return metadata


def _record_failure(meta: dict, seed: int, tag: str | None, error: Exception) -> None:
    """Note in the run's metadata (``failed``: seed → message) that a peer failed, and log it."""
    key = str(seed) if tag is None else f"{seed} ({tag} cells)"
    meta.setdefault("failed", {})[key] = f"{type(error).__name__}: {error}"
    logger.error(
        "seed %s: %s failed and is left out (%s: %s); the other runs go on",
        key,
        meta["model"],
        type(error).__name__,
        error,
    )


def _jsonable(values: dict) -> dict:
    return json.loads(json.dumps(values, default=str))


def _empty_results() -> pd.DataFrame:
    return pd.DataFrame(columns=RESULT_COLUMNS)


def _save_split(out: Path, split: Split, split_kind: str, seed: int, resume: bool) -> None:
    folder = out / "splits"
    folder.mkdir(exist_ok=True)
    path = folder / f"{split_kind}_seed{seed}.json"
    if resume and path.exists() and Split.load(path) != split:
        raise ValueError(
            f"{path} differs from the split this run would make; "
            "resume with the same data and options, or start a new --out"
        )
    split.save(path, overwrite=True)


def _seed_task(
    dataset: PerturbationDataset, split_kind: str, seed: int, split_params: dict
) -> tuple[PerturbationDataset, PerturbationDataset, Split, Callable[[ad.AnnData], ad.AnnData]]:
    """Data to fit on, data to score against, the split, and predictions' map between the two.

    The map is the identity except for context splits, whose models fit in a line-centred space.
    """
    if split_kind in CONTEXT_KINDS:
        task = cross_cell_line_task(dataset, seed=seed, kind=split_kind, **split_params)
        return task.fit, task.evaluation, task.split, task.to_target_line
    if split_kind in GUIDE_KINDS and "guide_map" not in split_params:
        split_params = {**split_params, "guide_map": dataset.guide_genes}
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


def _save_model_outputs(out: Path, stem: str, predictions, dataset, model) -> None:
    """Predicted pseudobulk deltas (and gene programs, when the model has them) for the report."""
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
    write_csv(deltas.reset_index(), folder / f"{stem}.csv", overwrite=True)
    programs = getattr(model, "programs_", None)
    if isinstance(programs, pd.DataFrame):
        (out / "programs").mkdir(exist_ok=True)
        write_csv(programs, out / "programs" / f"{stem}.csv", overwrite=True)


def _read_existing(path: Path, levels: tuple[int | None, ...] | None) -> pd.DataFrame:
    if not path.exists():
        return _empty_results()
    # round_trip: pandas' default float parser may change the last digit, so a resumed run's
    # results.csv would differ from an uninterrupted one.
    table = pd.read_csv(path, float_precision="round_trip")
    missing = set(RESULT_COLUMNS) - set(table.columns)
    if missing:
        raise ValueError(f"{path}: cannot resume, columns {sorted(missing)} are missing")
    if (levels is not None) != (TRAIN_CELLS_COLUMN in table.columns):
        raise ValueError(
            f"{path}: cannot resume, the run was made "
            + ("without" if levels is not None else "with")
            + " train_cells levels; resume with the same options, or start a new --out"
        )
    if levels is not None:
        # "10" and "all" share the column, so it is text whatever pandas guessed.
        table[TRAIN_CELLS_COLUMN] = table[TRAIN_CELLS_COLUMN].astype(str)
    return table


def _level_column(table: pd.DataFrame, levels: tuple[int | None, ...] | None) -> list:
    if levels is None or TRAIN_CELLS_COLUMN not in table.columns:  # no levels, or no rows yet
        return [None] * len(table)
    return table[TRAIN_CELLS_COLUMN].astype(str).tolist()


def _tagged(table: pd.DataFrame, tag: str | None) -> pd.DataFrame:
    """``table`` with its level in a ``train_cells`` column (none without levels)."""
    return table if tag is None else table.assign(**{TRAIN_CELLS_COLUMN: tag})


def _at(tag: str | None) -> str:
    return "" if tag is None else f" ({tag} training cells)"


def _file_suffix(tag: str | None) -> str:
    # The full-data level keeps the plain file names the report reads.
    return "" if tag in (None, ALL_CELLS) else f"_cells{tag}"


def _summary(
    results: pd.DataFrame, sizes: pd.DataFrame | None, levels: tuple[int | None, ...] | None
) -> pd.DataFrame:
    """The summary of :func:`benchmark_summary`, once per level (led by ``train_cells``)."""
    if levels is None:
        return benchmark_summary(results, sizes=sizes)
    parts = [
        benchmark_summary(part, sizes=sizes).assign(**{TRAIN_CELLS_COLUMN: tag})
        for tag, part in results.groupby(TRAIN_CELLS_COLUMN, sort=False)
    ]
    summary = pd.concat(parts, ignore_index=True)
    return summary[[TRAIN_CELLS_COLUMN, *[c for c in summary.columns if c != TRAIN_CELLS_COLUMN]]]


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    nonempty = [frame for frame in frames if len(frame)]
    return pd.concat(nonempty, ignore_index=True) if nonempty else _empty_results()


def _checkpoint(
    frames, timings, metadata: dict, out: Path, timing_columns: Sequence[str] = TIMING_COLUMNS
) -> None:
    write_csv(_concat(frames), out / "results.csv", overwrite=True)
    write_csv(pd.DataFrame(timings, columns=timing_columns), out / "timings.csv", overwrite=True)
    text = json.dumps(metadata, indent=2) + "\n"
    write_atomic(out / RUNS_FILE, True, lambda tmp: tmp.write_text(text))
