"""An ensemble of one model: fitted ``S`` times on one split, each member's predicted deltas.

Any registered model works: a member is the run's model fitted with its own model seed (and,
with ``bootstrap=True``, on its own resample of the cells), and its predicted delta is the
pseudobulk of ``model.predict`` minus the dataset's control mean — what the run loop saves.
Deterministic models (ridge, linear, …) give identical members over model seeds; only the
bootstrap gives them a spread. ``draws > 1`` predicts each member with several sampling seeds:
the members are the mean over draws, and the draws' spread is kept as ``resampling_sd``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd

from perturbflow.data.io import CONDITION_COLUMN, PerturbationDataset
from perturbflow.data.splits import Split
from perturbflow.eval.loop import RunSpec, fit_model

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ensemble:
    """``members``: one predicted delta ``(conditions, genes)`` per member; ``resampling_sd``:
    mean over members of the spread over sampling seeds ``(conditions, genes)``, ``None`` with
    one draw; ``seeds`` and ``fit_seconds`` per member; ``bootstrap``: members fitted on resampled
    cells."""

    label: str
    members: tuple[pd.DataFrame, ...]
    resampling_sd: pd.DataFrame | None
    seeds: tuple[int, ...]
    fit_seconds: tuple[float, ...]
    bootstrap: bool


def fit_ensemble(
    dataset: PerturbationDataset,
    split: Split,
    spec: RunSpec,
    conditions: Sequence[str],
    *,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    n_cells: int = 500,
    draws: int = 1,
    bootstrap: bool = False,
) -> Ensemble:
    """Fit ``spec`` once per seed on ``split`` and predict the deltas of ``conditions``.

    Member ``k`` uses model seed ``seeds[k]``; its draws use sampling seeds ``1000·k + d``. With
    ``bootstrap``, member ``k`` fits on the cells of every condition resampled with
    replacement (same counts per condition, generator seeded by ``seeds[k]``).
    """
    if len(seeds) < 2:
        raise ValueError(f"an ensemble needs at least 2 seeds, got {list(seeds)}")
    if draws < 1:
        raise ValueError(f"draws must be at least 1, got {draws}")
    control = dataset.control_expression().mean(axis=0)  # (G,)
    members, spreads, seconds = [], [], []
    for number, seed in enumerate(seeds):
        data = resample_cells(dataset, seed) if bootstrap else dataset
        start = time.perf_counter()
        model = fit_model(spec, data, split, seed)
        seconds.append(time.perf_counter() - start)
        predicted = [
            pseudobulk_delta(
                model.predict(conditions, n_cells=n_cells, seed=1000 * number + draw),
                dataset.genes,
                control,
            )
            for draw in range(draws)
        ]
        stacked = np.stack([frame.to_numpy() for frame in predicted])  # (D, C, G)
        members.append(_like(stacked.mean(axis=0), predicted[0]))
        if draws > 1:
            spreads.append(stacked.std(axis=0, ddof=1))
        logger.info("%s member %d (seed %d): fit %.1fs", spec.label, number, seed, seconds[-1])
    resampling = _like(np.mean(spreads, axis=0), members[0]) if spreads else None
    return Ensemble(
        label=spec.label,
        members=tuple(members),
        resampling_sd=resampling,
        seeds=tuple(int(seed) for seed in seeds),
        fit_seconds=tuple(seconds),
        bootstrap=bootstrap,
    )


def pseudobulk_delta(cells: ad.AnnData, genes: pd.Index, control: np.ndarray) -> pd.DataFrame:
    """Mean of predicted ``cells`` per condition (order of first appearance) minus ``control``
    ``(G,)``, over ``genes``: ``(conditions, genes)``."""
    labels = cells.obs[CONDITION_COLUMN].astype(str).to_numpy()
    matrix = np.asarray(cells[:, genes].X)  # (N, G)
    names = list(dict.fromkeys(labels))
    rows = [matrix[labels == name].mean(axis=0) - control for name in names]  # (G,) each
    return pd.DataFrame(np.vstack(rows), index=pd.Index(names), columns=genes)


def resample_cells(dataset: PerturbationDataset, seed: int) -> PerturbationDataset:
    """``dataset`` with each condition's cells drawn with replacement (same count per
    condition): a bootstrap replicate of the screen."""
    rng = np.random.default_rng(seed)
    labels = dataset.condition_labels.to_numpy()
    picks = [
        rng.choice(np.flatnonzero(labels == name), size=int((labels == name).sum()))
        for name in dataset.conditions
    ]
    order = np.concatenate(picks)  # (N,)
    source = dataset.adata
    adata = ad.AnnData(
        X=source.X[order],
        obs=source.obs.iloc[order].set_axis([f"boot{i}" for i in range(len(order))]),
        var=source.var.copy(),
        uns=dict(source.uns),
    )
    return PerturbationDataset(
        adata=adata,
        source=f"{dataset.source} (bootstrap seed {seed})",
        condition_key=dataset.condition_key,
        unmeasured_genes=dataset.unmeasured_genes,
        cell_type_key=dataset.cell_type_key,
    )


def _like(values: np.ndarray, like: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(values, index=like.index, columns=like.columns)
