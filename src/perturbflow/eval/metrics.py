"""Evaluation metrics: pure functions of numpy arrays, plus a registry.

Every metric is a pure function (no I/O, no globals, no randomness). Shapes: ``G`` genes,
``C`` conditions, ``N``/``M`` cells. Means are per-condition pseudobulks of log-normalised
expression; ``ctrl_mean`` is the mean of the real control cells; ``reference`` is the Systema
reference, the mean of the training perturbations' pseudobulks (Viñas Torné et al., Nat Biotech
2025).

The registry :data:`METRICS` records each metric's best value and direction, and a uniform calling
convention per ``kind`` so that :func:`perturbflow.eval.evaluate` runs every registered metric
without special cases:

- ``"mean"``: ``fn(pred_mean, true_mean, ctrl_mean, de_idx) -> float`` for one condition;
- ``"reference"``: ``fn(pred_mean, true_mean, reference, de_idx) -> float`` for one condition;
- ``"set"``:  ``fn(pred_means, true_means, exclude) -> (C,)`` across all evaluated conditions;
- ``"cells"``: ``fn(pred_cells, true_cells) -> float`` for one condition's single cells projected
  on the principal components of the control cells (``evaluate(energy_pcs=...)``);
- ``"gene_cells"``: the same on all genes, never projected;
- ``"de_overlap"``: ``fn(real_de, pred_de) -> (C,)`` from the DE tests of the real and the predicted
  cells against control (:class:`perturbflow.eval.overlap.DETable`). Costly (a rank test per gene
  and condition), so not computed by default (:data:`DEFAULT_METRIC_NAMES`).

Pearson correlations of a constant vector (e.g. a model that predicts no change at all) are
undefined: they return ``nan`` silently rather than warning once per condition; summaries skip
``nan`` and count it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.spatial.distance import cdist

from perturbflow.eval.overlap import OVERLAP_KS, DETable, de_overlap, overlap_metric_name

__all__ = [
    "DEFAULT_METRIC_NAMES",
    "METRICS",
    "MetricSpec",
    "UnknownMetricError",
    "direction_acc_de20",
    "discrimination_l1",
    "energy_distance",
    "get_metric",
    "mse_de20",
    "pearson",
    "pearson_delta",
    "pearson_delta_de20",
    "pearson_systema",
    "pearson_systema_de20",
]


def _vector(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"{name} must be a 1-D vector over genes, got shape {x.shape}")
    return x


def _same_length(**vectors: np.ndarray) -> None:
    shapes = {name: v.shape for name, v in vectors.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"vectors must have the same length, got shapes {shapes}")


def _index(de_idx: np.ndarray, n_genes: int) -> np.ndarray:
    idx = np.asarray(de_idx)
    if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
        raise ValueError(f"de_idx must be a 1-D array of integer gene indices, got {idx!r}")
    if idx.size and (idx.min() < -n_genes or idx.max() >= n_genes):
        raise ValueError(f"de_idx holds indices outside [0, {n_genes}): {idx!r}")
    return idx.astype(np.intp, copy=False)


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation of two vectors ``(G,)``; ``nan`` if either is constant or ``G < 2``.

    Constancy is tested exactly (all values equal) rather than by a small variance, because the
    centred values of a constant float vector are rounding noise whose "correlation" is arbitrary.
    """
    x, y = _vector(x, "x"), _vector(y, "y")
    _same_length(x=x, y=y)
    if x.size < 2 or np.all(x == x[0]) or np.all(y == y[0]):
        return float("nan")
    xc, yc = x - x.mean(), y - y.mean()  # (G,)
    denominator = np.sqrt((xc @ xc) * (yc @ yc))
    if not denominator > 0:  # underflow on a nearly constant vector
        return float("nan")
    return float(np.clip(xc @ yc / denominator, -1.0, 1.0))


# Changes from control below this many float32 ulps of the largest value are rounding noise.
_ROUNDING_ULPS = 16


def change(mean: np.ndarray, ctrl_mean: np.ndarray) -> np.ndarray:
    """``mean - ctrl_mean`` with changes within float32 rounding of the values set to 0.

    Predicted cells are stored as float32, so a model that predicts *no* change (control cells
    moved onto the control mean) still differs from the control mean by rounding; correlating
    that noise would give an arbitrary number instead of ``nan``.
    """
    delta = mean - ctrl_mean
    # Cells are rounded at their own magnitude, so the tolerance follows the largest value.
    scale = max(
        1.0, float(np.max(np.abs(mean), initial=0.0)), float(np.max(np.abs(ctrl_mean), initial=0.0))
    )
    delta[np.abs(delta) <= _ROUNDING_ULPS * np.finfo(np.float32).eps * scale] = 0.0
    return delta


def _pearson_of_change(pred_mean, true_mean, reference, name: str, de_idx=None) -> float:
    """Pearson of predicted vs true change from ``reference`` (named ``name`` in errors), on all
    genes or on ``de_idx``."""
    pred_mean, true_mean = _vector(pred_mean, "pred_mean"), _vector(true_mean, "true_mean")
    reference = _vector(reference, name)
    _same_length(pred_mean=pred_mean, true_mean=true_mean, **{name: reference})
    if de_idx is not None:
        idx = _index(de_idx, pred_mean.size)
        pred_mean, true_mean, reference = pred_mean[idx], true_mean[idx], reference[idx]
    return pearson(change(pred_mean, reference), change(true_mean, reference))


def pearson_delta(pred_mean: np.ndarray, true_mean: np.ndarray, ctrl_mean: np.ndarray) -> float:
    """Pearson of predicted vs true change from control, over all genes. Best 1."""
    return _pearson_of_change(pred_mean, true_mean, ctrl_mean, "ctrl_mean")


def pearson_delta_de20(
    pred_mean: np.ndarray, true_mean: np.ndarray, ctrl_mean: np.ndarray, de_idx: np.ndarray
) -> float:
    """Pearson of predicted vs true change from control on the DE genes ``de_idx``. Best 1."""
    return _pearson_of_change(pred_mean, true_mean, ctrl_mean, "ctrl_mean", de_idx)


def pearson_systema(pred_mean: np.ndarray, true_mean: np.ndarray, reference: np.ndarray) -> float:
    """Pearson of predicted vs true change from the Systema reference, over all genes. Best 1.

    ``reference`` ``(G,)`` is the mean of the training perturbations' pseudobulks (each condition
    weighted once, control excluded). Much of what perturbations do to a screen is shared by all
    of them (stress, cell-cycle arrest, selection); measured from control, that shared response
    alone correlates highly with every condition's change. Measured from the perturbed reference it
    cancels, and only the condition-specific part is scored (Viñas Torné et al., Nat Biotech 2025).
    A prediction equal to the reference (up to float32 rounding) has no change and gives ``nan``.
    """
    return _pearson_of_change(pred_mean, true_mean, reference, "reference")


def pearson_systema_de20(
    pred_mean: np.ndarray, true_mean: np.ndarray, reference: np.ndarray, de_idx: np.ndarray
) -> float:
    """:func:`pearson_systema` on the DE genes ``de_idx`` (top 20 vs control). Best 1."""
    return _pearson_of_change(pred_mean, true_mean, reference, "reference", de_idx)


def mse_de20(pred_mean: np.ndarray, true_mean: np.ndarray, de_idx: np.ndarray) -> float:
    """Mean squared error of the mean expression on the DE genes ``de_idx``. Best 0.

    ``nan`` when ``de_idx`` is empty. (Control cancels: the error of deltas equals that of means.)
    """
    pred_mean, true_mean = _vector(pred_mean, "pred_mean"), _vector(true_mean, "true_mean")
    _same_length(pred_mean=pred_mean, true_mean=true_mean)
    idx = _index(de_idx, pred_mean.size)
    if idx.size == 0:
        return float("nan")
    return float(np.mean((pred_mean[idx] - true_mean[idx]) ** 2))


def direction_acc_de20(
    pred_mean: np.ndarray, true_mean: np.ndarray, ctrl_mean: np.ndarray, de_idx: np.ndarray
) -> float:
    """Fraction of DE genes whose predicted change from control has the true sign. Best 1.

    Signs are ``-1, 0, +1``: a gene with exactly zero true change counts as correct only when its
    predicted change is exactly zero too. ``nan`` when ``de_idx`` is empty.
    """
    pred_mean, true_mean = _vector(pred_mean, "pred_mean"), _vector(true_mean, "true_mean")
    ctrl_mean = _vector(ctrl_mean, "ctrl_mean")
    _same_length(pred_mean=pred_mean, true_mean=true_mean, ctrl_mean=ctrl_mean)
    idx = _index(de_idx, pred_mean.size)
    if idx.size == 0:
        return float("nan")
    pred_sign = np.sign(pred_mean[idx] - ctrl_mean[idx])  # (n_de,)
    true_sign = np.sign(true_mean[idx] - ctrl_mean[idx])  # (n_de,)
    return float(np.mean(pred_sign == true_sign))


def discrimination_l1(
    pred_means: np.ndarray, true_means: np.ndarray, exclude: np.ndarray | None = None
) -> np.ndarray:
    """Perturbation discrimination score (cell-eval PDS, L1), one score per condition. Best 1.

    For each condition ``i``, the L1 distance from the predicted pseudobulk ``pred_means[i]`` to
    every real pseudobulk ``true_means[j]`` is computed; the rank of the true match is the number
    of *other* conditions at a distance ``<=`` that of ``true_means[i]`` (ties count against the
    prediction, so a prediction equally close to two conditions does not discriminate them), and
    ``score_i = 1 - rank_i / (C - 1)``: 1 when the true match is strictly closest, 0 when it is the
    farthest (or tied with the farthest). ``nan`` for every condition when ``C < 2``.

    Deltas versus raw means: cell-eval compares changes from control. Here both sides are shifted
    by the same real control mean, and L1 distance is translation invariant, so distances between
    deltas equal distances between means; we take means and state the equivalence instead of
    subtracting a vector that cancels. (cell-eval normalises by ``C`` instead of ``C - 1``, so its
    worst score is ``1/C``; ours spans [0, 1].)

    Parameters
    ----------
    pred_means, true_means
        ``(C, G)`` pseudobulks, row ``i`` of both for the same condition.
    exclude
        Optional ``(C, G)`` boolean mask: genes ignored when scoring condition ``i`` (all
        distances of row ``i``). cell-eval excludes each condition's target genes, whose knockdown
        identifies the condition trivially.

    Returns
    -------
    ``(C,)`` scores in [0, 1].
    """
    pred_means = np.asarray(pred_means, dtype=np.float64)  # (C, G)
    true_means = np.asarray(true_means, dtype=np.float64)  # (C, G)
    if pred_means.ndim != 2 or pred_means.shape != true_means.shape:
        raise ValueError(
            "pred_means and true_means must both be (conditions, genes) arrays of one shape, got "
            f"{pred_means.shape} and {true_means.shape}"
        )
    n_conditions = pred_means.shape[0]
    if exclude is not None:
        exclude = np.asarray(exclude, dtype=bool)
        if exclude.shape != pred_means.shape:
            raise ValueError(f"exclude must have shape {pred_means.shape}, got {exclude.shape}")
    if n_conditions < 2:
        return np.full(n_conditions, np.nan)
    scores = np.empty(n_conditions)
    for i in range(n_conditions):
        keep = slice(None) if exclude is None else ~exclude[i]  # genes used for row i
        distances = np.abs(true_means[:, keep] - pred_means[i, keep]).sum(axis=1)  # (C,)
        others = np.delete(distances, i)  # (C - 1,)
        rank = int(np.count_nonzero(others <= distances[i]))
        scores[i] = 1.0 - rank / (n_conditions - 1)
    return scores


def energy_distance(pred_cells: np.ndarray, true_cells: np.ndarray) -> float:
    """Energy distance (E-statistic) between two sets of cells, Euclidean. Best 0.

    ``2 E|X - Y| - E|X - X'| - E|Y - Y'|`` with ``|.|`` the Euclidean distance (not squared), as
    the *V-statistic*: within-set means include the zero self-distances. Unlike the unbiased
    U-statistic it is never negative and is exactly 0 for identical sets; its small positive bias
    shrinks as ``1/n``. Cost is ``O((N + M)^2 D)``: subsample large sets first.

    Parameters
    ----------
    pred_cells, true_cells
        ``(N, D)`` and ``(M, D)``, same features (genes or principal components), ``N, M >= 1``.
    """
    x = np.asarray(pred_cells, dtype=np.float64)  # (N, D)
    y = np.asarray(true_cells, dtype=np.float64)  # (M, D)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(
            f"pred_cells and true_cells must be (cells, features) with the same features, got "
            f"{x.shape} and {y.shape}"
        )
    if len(x) == 0 or len(y) == 0:
        raise ValueError(
            f"energy distance needs at least one cell per side, got {len(x)}, {len(y)}"
        )
    between = cdist(x, y).mean()  # E|X - Y|
    within_x = cdist(x, x).mean()  # E|X - X'|
    within_y = cdist(y, y).mean()  # E|Y - Y'|
    # The V-statistic is >= 0 in exact arithmetic; clip rounding noise.
    return float(max(2.0 * between - within_x - within_y, 0.0))


# -- registry -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricSpec:
    """A registered metric: its best value, direction, calling convention (``kind``) and function.

    ``fn`` follows the convention of its ``kind`` (see the module docstring), which may differ
    from the signature of the public function of the same name. ``by_default``: computed when no
    metric list is given (the costly DE overlap is not; ``evaluate(de_overlap=True)`` adds it).
    """

    name: str
    best: float
    higher_is_better: bool
    kind: Literal["mean", "reference", "set", "cells", "gene_cells", "de_overlap"]
    description: str
    fn: Callable[..., float | np.ndarray]
    by_default: bool = True


class UnknownMetricError(KeyError):
    """A metric name is not registered."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


def _pearson_delta(pred_mean, true_mean, ctrl_mean, de_idx) -> float:
    return pearson_delta(pred_mean, true_mean, ctrl_mean)


def _mse_de20(pred_mean, true_mean, ctrl_mean, de_idx) -> float:
    return mse_de20(pred_mean, true_mean, de_idx)


def _pearson_systema(pred_mean, true_mean, reference, de_idx) -> float:
    return pearson_systema(pred_mean, true_mean, reference)


METRICS: dict[str, MetricSpec] = {
    spec.name: spec
    for spec in (
        MetricSpec(
            "pearson_delta",
            1.0,
            True,
            "mean",
            "Pearson of predicted vs true mean change from control, all genes",
            _pearson_delta,
        ),
        MetricSpec(
            "pearson_delta_de20",
            1.0,
            True,
            "mean",
            "Pearson of predicted vs true mean change from control, top-20 DE genes",
            pearson_delta_de20,
        ),
        MetricSpec(
            "pearson_systema",
            1.0,
            True,
            "reference",
            "Pearson of predicted vs true mean change from the mean of the training perturbations "
            "(Systema reference), all genes",
            _pearson_systema,
        ),
        MetricSpec(
            "pearson_systema_de20",
            1.0,
            True,
            "reference",
            "Pearson of predicted vs true mean change from the mean of the training perturbations "
            "(Systema reference), top-20 DE genes",
            pearson_systema_de20,
        ),
        MetricSpec(
            "mse_de20",
            0.0,
            False,
            "mean",
            "Mean squared error of mean expression, top-20 DE genes",
            _mse_de20,
        ),
        MetricSpec(
            "direction_acc_de20",
            1.0,
            True,
            "mean",
            "Fraction of top-20 DE genes whose predicted change has the true sign",
            direction_acc_de20,
        ),
        MetricSpec(
            "discrimination_l1",
            1.0,
            True,
            "set",
            "Normalised rank of the true condition among all real pseudobulks by L1 (cell-eval "
            "PDS), target genes excluded",
            discrimination_l1,
        ),
        MetricSpec(
            "energy_distance",
            0.0,
            False,
            "cells",
            "Energy distance (V-statistic) between predicted and real cells, Euclidean, PCA "
            "space (50 PCs of control cells)",
            energy_distance,
        ),
        MetricSpec(
            "energy_distance_genes",
            0.0,
            False,
            "gene_cells",
            "Energy distance (V-statistic) between predicted and real cells, Euclidean, all genes",
            energy_distance,
        ),
    )
}


def _overlap_at(k: int | None) -> Callable[[DETable, DETable], np.ndarray]:
    def overlap(real_de: DETable, pred_de: DETable) -> np.ndarray:
        # The overlap uses the implementation that ran the DE test (cell-eval's when it did).
        return de_overlap(real_de, pred_de, k, backend=real_de.backend)

    return overlap


METRICS.update(
    {
        overlap_metric_name(k): MetricSpec(
            overlap_metric_name(k),
            1.0,
            True,
            "de_overlap",
            "cell-eval "
            + overlap_metric_name(k)
            + ": fraction of the real top-"
            + ("N (every real DE gene)" if k is None else str(k))
            + " DE genes among the predicted top ones; each side Mann-Whitney vs the real control "
            "cells, FDR < 0.05, ranked by |log2 fold change|",
            _overlap_at(k),
            by_default=False,
        )
        for k in OVERLAP_KS
    }
)
DEFAULT_METRIC_NAMES = tuple(name for name, spec in METRICS.items() if spec.by_default)


def get_metric(name: str) -> MetricSpec:
    """The registered metric ``name``; the error lists the known names."""
    try:
        return METRICS[name]
    except KeyError:
        raise UnknownMetricError(
            f"unknown metric {name!r}; registered metrics: {', '.join(METRICS)}"
        ) from None
