"""Fewer training cells per condition, for low-sample curves.

:func:`subsample_training_cells` caps the cells of every training condition (a split's ``train``
and ``val`` parts) at ``n`` and leaves control cells and the test conditions' cells untouched:
the test cells are the truth every level is scored against, so a curve over ``n`` compares like
with like. The draw is nested: for one seed, the cells kept at ``n = 10`` are among those kept
at ``n = 25``, so a curve's steps come from the cell count, not from a new draw.

A level is an ``int`` (at most that many cells) or ``None`` (every cell, spelt ``all``);
:func:`parse_train_cells` turns ``"10,25,all"`` into levels and :func:`train_cells_label` writes
a level as it appears in tables (``"10"``, ``"all"``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from perturbflow.data.conditions import CONTROL_NAME
from perturbflow.data.io import CONDITION_COLUMN, UNS_KEY, PerturbationDataset
from perturbflow.data.splits import Split

ALL_CELLS = "all"


class TrainCellsError(ValueError):
    """A requested number of training cells per condition is not a positive integer or ``all``."""


def train_cells_label(level: int | None) -> str:
    """How a level appears in tables and file names: ``"10"``, or ``"all"`` for ``None``."""
    return ALL_CELLS if level is None else str(int(level))


def parse_train_cells(text: str | Sequence[int | str | None]) -> tuple[int | None, ...]:
    """Levels from ``"10,25,50,all"`` (or a sequence of ints, ``"all"`` and ``None``), in the
    order given, duplicates dropped; ``all`` becomes ``None``.

    Raises :class:`TrainCellsError` naming the offending value for anything but a positive
    integer or ``all``, and for an empty list.
    """
    tokens = [t.strip() for t in text.split(",")] if isinstance(text, str) else list(text)
    levels: list[int | None] = []
    for token in tokens:
        level = _level(token)
        if level not in levels:
            levels.append(level)
    if not levels:
        raise TrainCellsError("give at least one number of training cells, e.g. 10,25,50,all")
    return tuple(levels)


def _level(token: int | str | None) -> int | None:
    if token is None or (isinstance(token, str) and token.lower() == ALL_CELLS):
        return None
    if isinstance(token, bool):
        raise TrainCellsError(f"{token!r} is not a number of training cells")
    try:
        level = int(token)
    except (TypeError, ValueError):
        raise TrainCellsError(
            f"training cells per condition must be a positive integer or 'all', got {token!r}"
        ) from None
    if isinstance(token, float | np.floating) and level != token:
        raise TrainCellsError(f"{token!r} is not a whole number of training cells")
    if level < 1:
        raise TrainCellsError(
            f"training cells per condition must be at least 1 (or 'all'), got {token!r}"
        )
    return level


def subsample_training_cells(
    dataset: PerturbationDataset,
    split: Split,
    n_cells_per_condition: int | str | None,
    seed: int,
) -> PerturbationDataset:
    """``dataset`` with every training condition of ``split`` cut to at most ``n`` cells.

    Training conditions are the perturbed conditions of ``split.train`` and ``split.val``; each
    keeps the first ``n`` cells of a seeded permutation of its cells (without replacement, in
    their original order), so levels of one seed are nested. Control cells, the test conditions'
    cells and conditions outside the split are kept as they are. ``None`` or ``"all"`` returns
    ``dataset`` itself. The level and seed are recorded in
    ``adata.uns["perturbflow"]["train_cells"]``.

    Raises :class:`TrainCellsError` for a level below 1 and ``KeyError`` when a training
    condition of the split is not in the dataset.
    """
    level = _level(n_cells_per_condition)
    if level is None:
        return dataset
    labels = dataset.condition_labels.to_numpy()
    training = sorted((set(split.train) | set(split.val)) - {CONTROL_NAME})
    missing = sorted(set(training) - set(labels))
    if missing:
        raise KeyError(
            f"training condition(s) {missing[:5]} of the {split.kind} split are not in dataset "
            f"{dataset.source!r}; make the split from this dataset's conditions"
        )
    rng = np.random.default_rng(seed)
    keep = np.ones(len(labels), dtype=bool)
    for name in training:  # sorted, so the draw does not depend on the split's order
        cells = np.flatnonzero(labels == name)
        keep[cells[rng.permutation(len(cells))[level:]]] = False
    view = dataset.adata[keep]
    adata = view.to_memory() if dataset.adata.isbacked else view.copy()
    adata.obs[CONDITION_COLUMN] = adata.obs[CONDITION_COLUMN].astype(str).astype("category")
    record = dict(adata.uns.get(UNS_KEY, {}))
    record["train_cells"] = {"n_cells_per_condition": level, "seed": int(seed)}
    adata.uns[UNS_KEY] = record
    return dataclasses.replace(dataset, adata=adata)
