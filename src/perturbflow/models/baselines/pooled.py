"""``pooled_additive``: each gene's effect fitted on every training condition it is in.

``additive`` takes a gene's effect from its single's cells alone, so a combination inherits the
sampling noise of two singles. Training combinations measure the same effects again
(``δ_AB ≈ δ_A + δ_B``): here the effects ``β`` are the weighted least-squares fit of every
training condition's delta on the genes it perturbs,

    min_β  Σ_c w_c ‖δ_c − Σ_{g ∈ c} β_g‖²,   w_c = n_c (singles),  combination_weight · n_c (others),

gene by gene of the expression (one closed-form solve), with ``n_c`` the condition's cells. A
combination is predicted as the sum of its genes' effects; a gene that no training condition
perturbs gets the mean effect of the genes with a training single, as in ``additive``. A gene
seen only in combinations is estimated from them (the minimum-norm solution where they cannot
separate it from its partner). With ``combination_weight=0`` it is ``additive``.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pandas as pd

from perturbflow.data.conditions import CONTROL_NAME, parse_condition
from perturbflow.models.base import register_model
from perturbflow.models.baselines.mean_shift import MeanShiftConfig, MeanShiftModel, single_gene

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PooledAdditiveConfig(MeanShiftConfig):
    """``combination_weight``: weight of a combination's cells relative to a single's (≥ 0)."""

    combination_weight: float = 1.0

    def __post_init__(self) -> None:
        if not np.isfinite(self.combination_weight) or self.combination_weight < 0:
            raise ValueError(
                "PooledAdditiveConfig.combination_weight must be a finite number >= 0, got "
                f"{self.combination_weight}"
            )


def pooled_effects(
    deltas: np.ndarray, conditions: list[str], cells: np.ndarray, combination_weight: float
) -> tuple[list[str], np.ndarray]:
    """Genes and their effects ``(P, G)`` fitted on ``deltas`` ``(C, G)`` of ``conditions``.

    ``cells`` ``(C,)`` counts the cells behind each delta (its weight, times
    ``combination_weight`` for a condition of two or more genes).
    """
    genes, design, weight = _weighted_design(conditions, cells, combination_weight)
    keep = weight > 0
    root = np.sqrt(weight[keep])[:, None]
    effects, *_ = np.linalg.lstsq(  # (P, G), minimum norm where effects are not separable
        design[keep] * root, np.asarray(deltas, dtype=np.float64)[keep] * root, rcond=None
    )
    return genes, effects.astype(np.float32)


def pooled_leverages(
    conditions: list[str], cells: np.ndarray, combination_weight: float
) -> np.ndarray:
    """``(C,)`` leverage ``h_cc`` of each condition in :func:`pooled_effects`' weighted fit.

    A condition's fitted sum minus its delta, divided by ``1 − h_cc``, is what the sum misses
    when the effects are fitted without that condition (closed-form leave-one-out); 0 for a
    condition of weight 0.
    """
    _, design, weight = _weighted_design(conditions, cells, combination_weight)
    gram = design.T @ (weight[:, None] * design)  # (P, P)
    spread = design @ np.linalg.pinv(gram, hermitian=True)  # (C, P)
    return weight * np.einsum("cp,cp->c", spread, design)


def _weighted_design(
    conditions: list[str], cells: np.ndarray, combination_weight: float
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Genes, the ``(C, P)`` indicator design of ``conditions`` and their ``(C,)`` weights."""
    genes = sorted({gene for name in conditions for gene in parse_condition(name)})
    column = {gene: index for index, gene in enumerate(genes)}
    design = np.zeros((len(conditions), len(genes)))  # (C, P)
    for row, name in enumerate(conditions):
        for gene in parse_condition(name):
            design[row, column[gene]] = 1.0
    weight = np.asarray(cells, dtype=np.float64) * np.array(
        [1.0 if single_gene(name) is not None else combination_weight for name in conditions]
    )  # (C,)
    return genes, design, weight


def training_effects(
    deltas: pd.DataFrame, cells: pd.Series, combination_weight: float
) -> dict[str, np.ndarray]:
    """Gene → effect ``(G,)`` fitted on a model's training deltas (rows: conditions, control
    left out), each weighted by its cells (``cells``: condition → count)."""
    names = [name for name in deltas.index if name != CONTROL_NAME]
    if not names:
        return {}
    counts = cells.reindex(names).to_numpy(np.float64)  # (C,)
    genes, effects = pooled_effects(deltas.loc[names].to_numpy(), names, counts, combination_weight)
    return dict(zip(genes, effects, strict=True))


@register_model("pooled_additive")
class PooledAdditive(MeanShiftModel):
    """Sum of gene effects fitted jointly on the training singles and combinations."""

    config_class = PooledAdditiveConfig

    def _fit(self, dataset, train) -> None:
        weight = self.config.combination_weight
        self._set_effects(training_effects(self.train_deltas_, dataset.cells_per_condition, weight))
        logger.info(
            "pooled_additive: %d gene effects from %d training conditions (combination weight %g)",
            len(self.effects_),
            len(self.train_deltas_.index.drop(CONTROL_NAME, errors="ignore")),
            weight,
        )

    def _set_effects(self, effects: dict[str, np.ndarray]) -> None:
        self.effects_ = dict(effects)
        singles = [gene for name in self.train_deltas_.index if (gene := single_gene(name))]
        self.mean_effect_ = (
            np.mean([self.effects_[gene] for gene in singles], axis=0)
            if singles
            else np.zeros(len(self.genes_), np.float32)
        )

    def _state(self) -> dict[str, np.ndarray]:
        return {
            "effect_genes": np.asarray(list(self.effects_), dtype=str),
            "effects": np.vstack(list(self.effects_.values()))
            if self.effects_
            else np.zeros((0, len(self.genes_)), np.float32),
        }

    def _set_state(self, arrays) -> None:
        genes = arrays["effect_genes"].astype(str).tolist()
        self._set_effects(dict(zip(genes, arrays["effects"], strict=True)))

    def known_genes(self) -> set[str]:
        return {*super().known_genes(), *self.effects_}

    def predict_delta(self, conditions):
        self._check_fitted()
        names = self._names(conditions)
        missing = sorted({g for n in names for g in parse_condition(n)} - set(self.effects_))
        if missing:
            logger.info(
                "pooled_additive: %d gene(s) no training condition perturbs get the mean effect "
                "(e.g. %s)",
                len(missing),
                missing[:3],
            )
        return super().predict_delta(names)

    def _delta(self, condition: frozenset[str], name: str) -> np.ndarray:
        return np.sum(
            [self.effects_.get(gene, self.mean_effect_) for gene in sorted(condition)], axis=0
        )
