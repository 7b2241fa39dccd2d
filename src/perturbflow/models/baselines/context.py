"""Calibration of a transferred change to the target context of a context split.

On a ``cross_cell_line`` / ``cross_context`` split a condition is predicted in a context where
it was never measured, from its change in the other contexts. That change transfers only in
part: contexts respond to the same perturbation differently, and every perturbation of a
context shares a response of its own (stress, proliferation; "systematic variation"). Both are
measurable on the target context's *training* perturbations, which have cells in the target
context and in the others.

The calibrated change of a condition is ``a · transferred + b · m_T``: ``transferred`` is what
the estimator predicts from the pooled training data (for a held-out condition, its change in
the other contexts), ``m_T`` the mean change of the target context's training perturbations.
``a`` and ``b`` (non-negative, at most ``MAX_SCALE``) are fitted by least squares over each
perturbation's largest target-context changes (``top_genes``, default 20, the genes DE metrics
score) and the target context's training perturbations measured in both places, each predicted from
its other-context change and ``m_T`` computed without it (leave one out). ``a = 1, b = 0`` is the
plain transfer; ``a = 0, b = 1`` predicts the context's mean response for every condition.
The calibration is kept only when, fitted without each of those perturbations in turn, it
predicts that perturbation's target-context change with a lower mean squared error than the
plain transfer does; otherwise the transfer is used as it is.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.optimize import nnls

from perturbflow.data.conditions import CONTROL_NAME
from perturbflow.data.io import PerturbationDataset
from perturbflow.data.splits import CONTEXT_KINDS, Split

logger = logging.getLogger(__name__)

MAX_SCALE = 2.0
MIN_CONDITIONS = 3  # target-context training perturbations measured in both places
MIN_CELLS = 3  # cells a perturbation needs on each side to give a change


@dataclass(frozen=True)
class ContextCalibration:
    """``a · delta + b · mean_delta``; the identity (``a = 1, b = 0``) off context splits."""

    transfer: float = 1.0
    context_mean: float = 0.0
    mean_delta: np.ndarray | None = None  # (G,) m_T; None for the identity
    n_conditions: int = 0

    def apply(self, delta: np.ndarray) -> np.ndarray:
        """The calibrated change ``(G,)`` of a transferred change ``delta`` ``(G,)``."""
        if self.mean_delta is None:
            return delta
        return (self.transfer * delta + self.context_mean * self.mean_delta).astype(delta.dtype)

    def state(self, n_genes: int) -> dict[str, np.ndarray]:
        """Arrays for a checkpoint (the identity stores zeros and ``n_conditions = 0``)."""
        mean = self.mean_delta if self.mean_delta is not None else np.zeros(n_genes)
        coef = [self.transfer, self.context_mean, float(self.n_conditions)]
        return {"context_coef": np.asarray(coef), "context_mean": np.asarray(mean, np.float32)}

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray]) -> ContextCalibration:
        transfer, context_mean, n = (float(v) for v in arrays["context_coef"])
        if n == 0:
            return cls()
        return cls(transfer, context_mean, np.asarray(arrays["context_mean"]), int(n))


def fit_context_calibration(
    dataset: PerturbationDataset, split: Split, top_genes: int = 20
) -> ContextCalibration:
    """The calibration of ``split``'s target context (identity for other splits, or when fewer
    than ``MIN_CONDITIONS`` target-context training perturbations have cells on both sides).

    ``top_genes``: fit and check on each perturbation's ``top_genes`` largest target-context
    changes (``0``: all genes)."""
    if split.kind not in CONTEXT_KINDS:
        return ContextCalibration()
    key, target = split.params["cell_type_key"], split.params["target_line"]
    contexts = dataset.adata.obs[key].astype(str).to_numpy()  # (N,)
    labels = dataset.condition_labels.to_numpy()  # (N,)
    matrix = dataset.adata.X
    in_target = contexts == target

    def mean(mask: np.ndarray) -> np.ndarray:
        rows = matrix[mask]
        return np.asarray(rows.mean(axis=0) if sp.issparse(rows) else rows.mean(axis=0)).ravel()

    control = labels == CONTROL_NAME
    if not (control & in_target).any() or not (control & ~in_target).any():
        return ContextCalibration()
    control_target, control_other = mean(control & in_target), mean(control & ~in_target)
    held_out = set(split.test)
    target_deltas, other_deltas = {}, {}
    for name in split.train:
        if name == CONTROL_NAME:
            continue
        cells = labels == name
        if (cells & in_target).sum() >= MIN_CELLS:
            target_deltas[name] = mean(cells & in_target) - control_target
            if (cells & ~in_target).sum() >= MIN_CELLS and name not in held_out:
                other_deltas[name] = mean(cells & ~in_target) - control_other
    both = sorted(other_deltas)
    if len(both) < MIN_CONDITIONS:
        logger.info(
            "context calibration of %s: %d target-context training perturbation(s) measured in "
            "other contexts too (needs %d); the transferred change is used as it is",
            target,
            len(both),
            MIN_CONDITIONS,
        )
        return ContextCalibration()
    names = sorted(target_deltas)
    stacked = np.vstack([target_deltas[n] for n in names]).astype(np.float64)  # (T, G)
    total, n = stacked.sum(axis=0), len(names)
    features, targets = [], []
    for name in both:
        loo_mean = (total - target_deltas[name]) / (n - 1) if n > 1 else np.zeros_like(total)
        target_delta = np.asarray(target_deltas[name], np.float64)  # (G,)
        rows = np.arange(len(target_delta))
        if top_genes:  # the genes this perturbation changes most, as DE metrics weigh them
            rows = np.argsort(-np.abs(target_delta), kind="stable")[:top_genes]
        features.append(np.column_stack([other_deltas[name], loo_mean])[rows])  # (g, 2)
        targets.append(target_delta[rows])  # (g,)
    transfer, context_mean = (float(c) for c in _fit_scales(features, targets))
    # Keep the calibration only where it predicts a held-out perturbation better than the plain
    # transfer does (each perturbation predicted with scales fitted on the others).
    plain = np.mean([np.mean((t - f[:, 0]) ** 2) for f, t in zip(features, targets, strict=True)])
    nested = np.mean(
        [
            np.mean(
                (targets[i] - features[i] @ _fit_scales(_drop(features, i), _drop(targets, i))) ** 2
            )
            for i in range(len(both))
        ]
    )
    if nested >= plain:
        logger.info(
            "context calibration of %s: the plain transferred change predicts held-out "
            "perturbations as well (mean squared error %.4g vs %.4g calibrated); kept as it is",
            target,
            plain,
            nested,
        )
        return ContextCalibration()
    logger.info(
        "context calibration of %s from %d perturbation(s): %.2f × transferred change + %.2f × "
        "the context's mean response (held-out error %.4g vs %.4g plain)",
        target,
        len(both),
        transfer,
        context_mean,
        nested,
        plain,
    )
    return ContextCalibration(transfer, context_mean, total / n, len(both))


def _fit_scales(features: list[np.ndarray], targets: list[np.ndarray]) -> np.ndarray:
    """Non-negative least-squares ``(a, b)``, each at most ``MAX_SCALE``."""
    coef, _ = nnls(np.vstack(features), np.concatenate(targets))
    return np.clip(coef, 0.0, MAX_SCALE)


def _drop(items: list, index: int) -> list:
    return items[:index] + items[index + 1 :]
