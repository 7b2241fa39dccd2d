"""Control mean and additive baselines (docs/method.md §3)."""

from __future__ import annotations

import logging

import numpy as np

from perturbflow.models.base import register_model
from perturbflow.models.baselines.mean_shift import MeanShiftModel

logger = logging.getLogger(__name__)


@register_model("control_mean")
class ControlMean(MeanShiftModel):
    """Predicts no change: every condition looks like control."""

    def _delta(self, condition: frozenset[str], name: str) -> np.ndarray:
        return np.zeros(len(self.genes_))


@register_model("additive")
class Additive(MeanShiftModel):
    """``delta(A+B) = delta(A) + delta(B)`` from training singles.

    A gene without a training single contributes the mean delta of all training singles (the
    GEARS convention); this is logged once per prediction call.
    """

    def _fit(self, dataset, train) -> None:
        self.single_deltas_, self.mean_single_delta_ = self._single_deltas()

    def _set_state(self, arrays) -> None:
        self._fit(None, None)

    def predict_delta(self, conditions):
        self._check_fitted()
        names = self._names(conditions)
        self._log_genes_without_single(names, "the mean single delta")
        return super().predict_delta(names)

    def _delta(self, condition: frozenset[str], name: str) -> np.ndarray:
        unseen = sorted(condition - set(self.single_deltas_))
        if unseen:
            logger.debug(
                "additive: %s has no training single for %s; using the mean delta", name, unseen
            )
        return np.sum(
            [self.single_deltas_.get(gene, self.mean_single_delta_) for gene in sorted(condition)],
            axis=0,
        )
