"""Cell-line contexts: centre each line on its own control cells; the cross-cell-line task.

The task (kind ``cross_cell_line``): train on two lines plus part of a third, predict the rest of
the third. :func:`cross_cell_line_task` turns one multi-line dataset into the data to fit on, the
data to score against, the :class:`~perturbflow.data.splits.Split` and the way back from the
fitting space to the target line's; every model runs unchanged (``fit(dataset, split)``,
``predict(conditions)``).

Why centring makes this an ordinary benchmark
---------------------------------------------
:func:`centre_by_context` subtracts from every cell the mean of its own line's control cells,
``x' = x - mu_line``. In that space a condition name means the same thing in every line — the
response to it, measured from that line's control. Cells of ``MAPK1`` from the training lines
pool under one label, so a model fit on them and asked for ``MAPK1`` predicts the response
transferred to the target line: the standard context-transfer setup, with no model special-cased.

Scoring. A centred prediction ``y'`` is ``y' + mu_target`` in the target line's original space
(:meth:`CrossCellLineTask.to_target_line`); it is scored there against the target line's real,
untouched cells (its control cells as the reference, its held-out cells as the truth), exactly as
any other split. Mathematically this equals scoring ``y'`` against the target line's *centred*
cells — one vector ``mu_target`` added to prediction, truth and control cancels in deltas, DE
genes (t-tests of truth against control), Pearson and MSE of deltas, discrimination and energy
distances (on principal components of the control cells, which re-centre). Numerically it is
safer: a gene that is exactly zero in every cell of a condition stays exactly constant, whereas in
a float32 centred copy scanpy's t-test can lose its variance to rounding, drop its score and
change the top-20 DE genes (seen on ``mcfaline23_subset``).

What centring does not align: lines that differ in spread or respond differently stay different.
Models see all lines' (centred) control cells as their control distribution, so distribution
metrics also measure that mismatch — part of the transfer being tested.

Leakage: the same name (``MAPK1``) is a training condition (other lines' cells) and a test
condition (target-line cells). The split records ``cell_type_key`` and ``target_line`` in its
``params``; :func:`check_no_context_leakage` verifies that no cell to fit on is a target-line
test cell. Validation conditions are training names that are not test names. The target line's
control cells are training cells, as control always is, and the evaluation reference.

Centred values can be negative and are no longer log1p counts, so raw-count layers and cell
embeddings (``layers``, ``obsm``, ``obsp``) are dropped; the per-line control means are kept in
``varm["context_control_mean"]`` and the step in ``uns["perturbflow"]["context_centring"]``.
"""

from __future__ import annotations

import copy
import logging
from typing import Any, NamedTuple

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from perturbflow.data.conditions import CONTROL_NAME
from perturbflow.data.covariates import centre_on_controls, control_counts
from perturbflow.data.io import (
    CONDITION_COLUMN,
    UNS_KEY,
    DataValidationError,
    PerturbationDataset,
)
from perturbflow.data.messages import preview as _preview
from perturbflow.data.splits import (
    CONTEXT_KINDS,
    CROSS_CELL_LINE,
    Split,
    SplitLeakageError,
    cross_cell_line_split,
)

logger = logging.getLogger(__name__)

__all__ = [
    "CENTRING_KEY",
    "CONTROL_MEAN_KEY",
    "ContextError",
    "CrossCellLineTask",
    "centre_by_context",
    "check_no_context_leakage",
    "context_labels",
    "cross_cell_line_task",
    "rotate_target",
]

CENTRING_KEY = "context_centring"  # in adata.uns["perturbflow"]
CONTROL_MEAN_KEY = "context_control_mean"  # in adata.varm: (genes, lines)


class ContextError(DataValidationError):
    """The dataset's cell-line (context) column cannot support the requested step."""


class CrossCellLineTask(NamedTuple):
    """One seed of the cross-cell-line task.

    ``fit``: centred cells to fit on. ``evaluation``: the target line's original cells (control
    and held-out conditions). ``target_offset``: the target line's control mean ``(genes,)``, what
    :meth:`to_target_line` adds to centred predictions.
    """

    fit: PerturbationDataset
    evaluation: PerturbationDataset
    split: Split
    target_offset: pd.Series

    def to_target_line(self, predictions: ad.AnnData) -> ad.AnnData:
        """A copy of centred ``predictions`` moved into the target line's original space."""
        offset = self.target_offset.reindex(predictions.var_names)
        if offset.isna().any():
            unknown = list(predictions.var_names[offset.isna().to_numpy()][:5])
            raise ValueError(f"predictions name genes the dataset does not have: {unknown}")
        matrix = predictions.X
        dense = matrix.toarray() if sp.issparse(matrix) else np.asarray(matrix)
        moved = predictions.copy()
        moved.X = (dense + offset.to_numpy()).astype(np.float32)  # (n_cells, G)
        info: dict[str, Any] = dict(moved.uns.get(UNS_KEY, {}))
        info["moved_to_line"] = self.split.params["target_line"]
        moved.uns[UNS_KEY] = info
        return moved


def context_labels(dataset: PerturbationDataset, key: str | None = None) -> pd.Series:
    """Each cell's line (index: obs_names, values: strings), validated.

    ``key`` defaults to ``dataset.cell_type_key``. Raises :class:`ContextError` when no column is
    named, the column is absent, or a cell has no line.
    """
    key = key if key is not None else dataset.cell_type_key
    obs = dataset.adata.obs
    if key is None:
        raise ContextError(
            f"dataset {dataset.source!r} has no cell-type column: read it with "
            "perturbflow.data.read(..., cell_type_key=<obs column>) or pass key=<obs column>; "
            f"obs columns: {_preview(obs.columns)}"
        )
    if key not in obs.columns:
        raise ContextError(
            f"dataset {dataset.source!r}: obs has no cell-type column {key!r}; "
            f"obs columns: {_preview(obs.columns)}"
        )
    column = obs[key]
    missing = column.isna() | column.astype(str).str.strip().eq("")
    if missing.any():
        raise ContextError(
            f"dataset {dataset.source!r}: obs[{key!r}] is empty for {int(missing.sum())} cell(s) "
            f"(first: {list(obs.index[missing.to_numpy()][:3])}); give every cell its line"
        )
    return column.astype(str)


def centre_by_context(dataset: PerturbationDataset, key: str | None = None) -> PerturbationDataset:
    """A dense copy of ``dataset`` with each cell minus its line's mean control expression.

    ``key`` (default ``dataset.cell_type_key``) names the ``obs`` column of lines; every line needs
    control cells (:class:`ContextError` otherwise). Each line's control mean becomes zero. The
    result keeps ``obs``, ``var`` and ``uns``, adds ``varm["context_control_mean"]``
    ``(genes, lines)`` and ``uns["perturbflow"]["context_centring"]``, and drops ``layers``,
    ``obsm`` and ``obsp`` (they no longer match ``X``). See the module docstring for why.
    """
    labels = context_labels(dataset, key).to_numpy()  # (N,)
    key = key if key is not None else dataset.cell_type_key
    is_control = (dataset.condition_labels == CONTROL_NAME).to_numpy()  # (N,)
    n_control = control_counts(labels, is_control)
    lines = list(n_control)
    lacking = [line for line, n in n_control.items() if n == 0]
    if lacking:
        raise ContextError(
            f"dataset {dataset.source!r}: line(s) {lacking} in obs[{key!r}] have no control "
            f"cells, so they cannot be centred on their control; control cells per line: "
            f"{n_control}. Drop those lines or add their control cells"
        )
    source = dataset.adata.to_memory() if dataset.adata.isbacked else dataset.adata
    expression, line_means = centre_on_controls(source.X, labels, is_control)  # (N, G), (L, G)
    means = line_means.T  # (G, L)
    uns = copy.deepcopy(dict(source.uns))
    info = dict(uns.get(UNS_KEY, {}))
    info[CENTRING_KEY] = {
        "cell_type_key": key,
        "reference": CONTROL_NAME,
        "lines": lines,
        "n_control_cells": n_control,
        "control_mean": f"varm[{CONTROL_MEAN_KEY!r}]",
    }
    uns[UNS_KEY] = info
    adata = ad.AnnData(X=expression, obs=source.obs.copy(), var=source.var.copy(), uns=uns)
    adata.varm[CONTROL_MEAN_KEY] = pd.DataFrame(means, index=adata.var_names, columns=lines)
    logger.info("centred %d cells on the control mean of their line (%s)", len(labels), lines)
    return _with_adata(dataset, adata, key)


def rotate_target(lines: list[str], seed: int) -> str:
    """The target line of ``seed``: ``sorted(lines)[(seed - 1) % len(lines)]``.

    Seeds 1, 2, … visit every line in turn, so ``len(lines)`` consecutive seeds cover them all.
    """
    ordered = sorted(lines)
    if not ordered:
        raise ContextError("no lines to choose a target line from")
    return ordered[(int(seed) - 1) % len(ordered)]


def cross_cell_line_task(
    dataset: PerturbationDataset,
    *,
    seed: int,
    target: str | None = None,
    test_fraction: float = 0.5,
    val_fraction: float = 0.1,
    key: str | None = None,
    kind: str = CROSS_CELL_LINE,
) -> CrossCellLineTask:
    """One seed of the cross-cell-line task: data to fit on and to score against, the split.

    Parameters
    ----------
    dataset
        Cells of two or more lines, each with control cells; ``key`` (default
        ``dataset.cell_type_key``) names the ``obs`` column of lines.
    seed
        Seeds the choice of test conditions and validation; also picks the target line when
        ``target`` is not given (:func:`rotate_target`).
    target
        The line whose held-out conditions are predicted.
    test_fraction, val_fraction
        Passed to :func:`perturbflow.data.splits.cross_cell_line_split`: the fraction of the
        target line's perturbations held out (at least one; all only at ``1.0``), and of the
        remaining non-test training perturbations used for validation.

    kind
        ``cross_cell_line`` or ``cross_context`` (the same task over any context column; its
        test subgroup is ``cross_context_<target>``).

    Returns
    -------
    ``fit`` holds every centred cell except the target line's test-condition cells;
    ``evaluation`` holds the target line's original (not centred) control and test-condition
    cells; ``split`` is a ``cross_cell_line`` split whose test subgroup is
    ``cross_line_<target>``; ``to_target_line`` moves a model's predictions to ``evaluation``'s
    space.
    """
    centred = centre_by_context(dataset, key)
    key = centred.cell_type_key
    labels = context_labels(centred).to_numpy()  # (N,)
    lines = sorted(set(labels))
    if len(lines) < 2:
        raise ContextError(
            f"a {kind} task needs at least 2 contexts in obs[{key!r}], got {lines}: a context "
            "column with one value has nothing to transfer between"
        )
    if target is None:
        target = rotate_target(lines, seed)
    elif str(target) not in lines:
        raise ContextError(f"target line {target!r} is not in obs[{key!r}]; lines: {lines}")
    target = str(target)
    conditions = centred.condition_labels.to_numpy()  # (N,)
    in_target = labels == target  # (N,)
    split = cross_cell_line_split(
        pd.unique(conditions[~in_target]),
        pd.unique(conditions[in_target]),
        seed=seed,
        cell_type_key=key,
        target_line=target,
        lines=lines,
        test_fraction=test_fraction,
        val_fraction=val_fraction,
        kind=kind,
    )
    is_test = np.isin(conditions, split.test)  # (N,)
    fit = _take(centred, ~(in_target & is_test), key)
    evaluation = _take(dataset, in_target & (is_test | (conditions == CONTROL_NAME)), key)
    check_no_context_leakage(fit, split)
    logger.info(
        "cross-cell-line task (seed %d): target %s, %d cells to fit, %d to evaluate",
        split.seed,
        target,
        fit.adata.n_obs,
        evaluation.adata.n_obs,
    )
    offset = centred.adata.varm[CONTROL_MEAN_KEY][target]
    return CrossCellLineTask(fit, evaluation, split, offset.rename(f"control mean of {target}"))


def check_no_context_leakage(fit: PerturbationDataset, split: Split) -> None:
    """Raise :class:`SplitLeakageError` if ``fit`` holds a test cell of the split's target line."""
    if split.kind not in CONTEXT_KINDS:
        raise ValueError(
            f"check_no_context_leakage needs a context split ({', '.join(sorted(CONTEXT_KINDS))}), "
            f"got kind {split.kind!r}"
        )
    key, target = split.params["cell_type_key"], split.params["target_line"]
    labels = context_labels(fit, key)
    leaked = (labels == target).to_numpy() & fit.condition_labels.isin(split.test).to_numpy()
    if leaked.any():
        names = sorted(set(fit.condition_labels[leaked]))
        raise SplitLeakageError(
            f"{int(leaked.sum())} cell(s) of target line {target!r} in test condition(s) "
            f"{names} are in the data to fit on"
        )


def _take(dataset: PerturbationDataset, mask: np.ndarray, key: str) -> PerturbationDataset:
    """The cells in ``mask`` as a new in-memory dataset, with unused condition categories dropped."""
    view = dataset.adata[mask]
    adata = view.to_memory() if dataset.adata.isbacked else view.copy()
    adata.obs[CONDITION_COLUMN] = adata.obs[CONDITION_COLUMN].astype(str).astype("category")
    return _with_adata(dataset, adata, key)


def _with_adata(
    dataset: PerturbationDataset, adata: ad.AnnData, key: str | None
) -> PerturbationDataset:
    return PerturbationDataset(
        adata=adata,
        source=dataset.source,
        condition_key=dataset.condition_key,
        unmeasured_genes=dataset.unmeasured_genes,
        cell_type_key=key,
    )
