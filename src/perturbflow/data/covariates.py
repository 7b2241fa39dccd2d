"""Control cells matched to perturbed cells by a recorded covariate (context, batch).

Why: a delta is the perturbed cells' mean minus the control cells' mean. When the two groups
come from different mixes of contexts (stimulated / resting, two cell lines, sequencing batches),
that difference carries the context difference too, the same artefact for every perturbation:
every delta looks alike, correlations of deltas rise above what replicates reach, and
discrimination falls to chance.

Matching: cells are grouped into strata by the key columns (one column or the combination of
several); each cell moves by its stratum's control mean, ``x' = x - mu_control[stratum] +
mu_control``, where ``mu_control`` is the mean of all control cells. Every stratum's control cells
then share one mean, so the mean of a perturbed condition minus the control mean is the
average of its within-stratum deltas weighted by its own cells' composition — the stratified
comparison. Everything downstream (DE tests, metrics, the noise ceiling, models' training pairs)
sees the matched cells and needs no key of its own. Matching aligns means only: strata that
differ in spread stay different.

Detection: :func:`composition_imbalance` compares the control cells' composition over each
recorded categorical column with the perturbed cells' (total variation distance and a
chi-square test) and names the columns where they differ, so :func:`perturbflow.data.read` can
warn when no key was given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.stats import chi2_contingency

from perturbflow.data.messages import preview as _preview

__all__ = [
    "CovariateError",
    "centre_on_controls",
    "control_counts",
    "Imbalance",
    "composition_imbalance",
    "match_controls",
    "strata_labels",
]

MIN_DISTANCE = 0.1  # total variation distance between control and perturbed compositions
MAX_P_VALUE = 1e-3  # chi-square test of the same contingency table
MAX_LEVELS = 50  # columns with more levels are identifiers, not covariates


class CovariateError(ValueError):
    """A covariate column cannot support matching (missing, one value, a stratum without
    control cells)."""


@dataclass(frozen=True)
class Imbalance:
    """A column whose composition differs between control and perturbed cells."""

    column: str
    distance: float  # total variation distance, 0 (same mix) to 1 (disjoint)
    p_value: float
    control: dict[str, float]  # level -> fraction of control cells
    perturbed: dict[str, float]  # level -> fraction of perturbed cells

    def describe(self) -> str:
        """``control 70% a, 30% b vs perturbed 50% a, 50% b``."""

        def mix(fractions: dict[str, float], shown: int = 6) -> str:
            parts = [f"{100 * v:.0f}% {k}" for k, v in fractions.items()]
            more = f", … ({len(parts) - shown} more)" if len(parts) > shown else ""
            return ", ".join(parts[:shown]) + more

        return f"control {mix(self.control)} vs perturbed {mix(self.perturbed)}"


def strata_labels(obs: pd.DataFrame, keys: Sequence[str], where: str) -> pd.Series:
    """Each cell's stratum: the value of one key column, or the values of several joined by
    ``" | "``. Raises :class:`CovariateError` for an absent column, a missing value, or a column
    with a single value (nothing to match)."""
    if not keys:
        raise CovariateError(f"{where}: no covariate column given to match control cells on")
    parts = []
    for key in keys:
        if key not in obs.columns:
            raise CovariateError(
                f"{where}: obs has no column {key!r} to match control cells on; obs columns: "
                f"{_preview(obs.columns)}"
            )
        column = obs[key]
        missing = column.isna().to_numpy() | column.astype(str).str.strip().eq("").to_numpy()
        if missing.any():
            raise CovariateError(
                f"{where}: obs[{key!r}] is empty for {int(missing.sum())} cell(s) (first: "
                f"{list(obs.index[missing][:3])}); give every cell its value or drop those cells"
            )
        values = column.astype(str)
        levels = sorted(values.unique())
        if len(levels) < 2:
            raise CovariateError(
                f"{where}: obs[{key!r}] has one value ({levels[0]!r}) in every cell, so there is "
                "nothing to match control cells on; drop this key"
            )
        parts.append(values)
    labels = parts[0]
    for part in parts[1:]:
        labels = labels + " | " + part
    return labels.rename(" | ".join(keys))


def match_controls(
    matrix: np.ndarray, strata: pd.Series, is_control: np.ndarray, where: str
) -> tuple[np.ndarray, pd.DataFrame]:
    """``matrix`` ``(cells, genes)`` with each cell moved by its stratum's control mean.

    Returns the matched float32 matrix and the control mean of every stratum ``(strata, genes)``
    (the last row, ``"all control cells"``, is the pooled control mean every stratum is moved
    onto). Raises :class:`CovariateError` when a stratum has no control cells: its perturbed cells
    have nothing to be compared with.
    """
    labels = strata.to_numpy()  # (N,)
    is_control = np.asarray(is_control, dtype=bool)  # (N,)
    n_control = control_counts(labels, is_control)
    lacking = [level for level, n in n_control.items() if n == 0]
    if lacking:
        raise CovariateError(
            f"{where}: {strata.name} value(s) {lacking} have no control cells, so their perturbed "
            f"cells cannot be compared with control cells of the same {strata.name}; control cells "
            f"per value: {n_control}. Drop those cells or match on another column"
        )
    pooled = np.asarray(matrix, dtype=np.float32)[is_control].mean(axis=0, dtype=np.float64)
    expression, means = centre_on_controls(matrix, labels, is_control, onto=pooled)
    table = pd.DataFrame(np.vstack([means, pooled]), index=[*n_control, "all control cells"])
    return expression, table


def control_counts(labels: np.ndarray, is_control: np.ndarray) -> dict[str, int]:
    """Control cells per stratum (sorted strata), zeros included."""
    return {level: int((is_control & (labels == level)).sum()) for level in sorted(set(labels))}


def centre_on_controls(
    matrix, labels: np.ndarray, is_control: np.ndarray, onto: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """A float32 copy of ``matrix`` ``(N, G)`` with each cell minus its stratum's control mean
    (plus ``onto`` ``(G,)`` when given), and those means ``(strata, G)`` in sorted stratum order.
    Every stratum must have control cells (callers check, with their own message)."""
    dense = matrix.toarray() if sp.issparse(matrix) else np.asarray(matrix)
    expression = dense.astype(np.float32, copy=True)  # (N, G)
    levels = sorted(set(labels))
    means = np.zeros((len(levels), expression.shape[1]))  # (S, G)
    for i, level in enumerate(levels):
        rows = labels == level  # (N,)
        means[i] = expression[rows & is_control].mean(axis=0, dtype=np.float64)
        # float64 arithmetic, float32 kept
        moved = expression[rows] - means[i]
        expression[rows] = moved if onto is None else moved + onto
    return expression, means


def composition_imbalance(
    obs: pd.DataFrame,
    is_control: np.ndarray,
    conditions: pd.Series,
    *,
    exclude: Sequence[str] = (),
    min_distance: float = MIN_DISTANCE,
    max_p_value: float = MAX_P_VALUE,
) -> list[Imbalance]:
    """Recorded covariates whose composition differs between control and perturbed cells.

    A column is a candidate when it is categorical, string or boolean, has 2–50 levels, is not
    in ``exclude``, varies *within* perturbed conditions (in at least half of those with two
    or more cells) and has at least two levels found in both control and perturbed cells —
    columns that restate the perturbation (target gene, guide, ``gene_cellline``) are not
    covariates. It is reported when the total variation distance between the control and
    perturbed compositions is at least ``min_distance`` and a chi-square test gives
    ``p < max_p_value``. Sorted by distance, largest first.
    """
    is_control = np.asarray(is_control, dtype=bool)
    if is_control.all() or not is_control.any():
        return []
    found = []
    for column in obs.columns:
        if column in exclude:
            continue
        series = obs[column]
        if not (
            isinstance(series.dtype, pd.CategoricalDtype)
            or pd.api.types.is_object_dtype(series)
            or pd.api.types.is_string_dtype(series)
            or pd.api.types.is_bool_dtype(series)
        ):
            continue
        values = series.astype(str).where(series.notna(), "<missing>")
        levels = sorted(values.unique())
        if not 2 <= len(levels) <= MAX_LEVELS or not _varies_within(values, conditions, is_control):
            continue
        shared = set(values[is_control]) & set(values[~is_control])
        if len(shared) < 2:  # control cells have levels of their own: a restated condition
            continue
        table = pd.crosstab(is_control, values).reindex(index=[True, False], columns=levels)
        table = table.fillna(0).to_numpy(dtype=float)  # (2, levels): control, perturbed
        fractions = table / table.sum(axis=1, keepdims=True)
        distance = 0.5 * float(np.abs(fractions[0] - fractions[1]).sum())
        if distance < min_distance:
            continue
        p_value = float(chi2_contingency(table[:, table.sum(axis=0) > 0])[1])
        if p_value < max_p_value:
            found.append(
                Imbalance(
                    column=str(column),
                    distance=distance,
                    p_value=p_value,
                    control=dict(zip(levels, fractions[0].round(3).tolist(), strict=True)),
                    perturbed=dict(zip(levels, fractions[1].round(3).tolist(), strict=True)),
                )
            )
    return sorted(found, key=lambda item: -item.distance)


def _varies_within(values: pd.Series, conditions: pd.Series, is_control: np.ndarray) -> bool:
    perturbed = pd.DataFrame(
        {"value": values.to_numpy()[~is_control], "condition": conditions.to_numpy()[~is_control]}
    )
    sizes = perturbed.groupby("condition", observed=True)["value"].agg(["size", "nunique"])
    sizes = sizes[sizes["size"] >= 2]
    return len(sizes) > 0 and float((sizes["nunique"] > 1).mean()) >= 0.5
