"""Prediction intervals from an ensemble of predicted deltas, and how often they hold.

An *ensemble* is ``S ≥ 2`` predictions of the same pseudobulk deltas (conditions × genes, change
vs the control mean), e.g. one model fitted with ``S`` model seeds or on ``S`` bootstrap
resamples of its training cells (:mod:`perturbflow.eval.ensemble`). From it, per condition and
gene:

* ``quantile`` — the empirical ``(1 − p)/2`` and ``(1 + p)/2`` quantiles over the members. With
  few members it cannot be wide enough: ``S`` exchangeable draws bracket a new one with
  probability at most ``(S − 1)/(S + 1)`` (4/6 for ``S = 5``), whatever ``p`` asks for.
* ``gaussian`` — ``mean ± z_p · sd`` with ``sd² = var_between + Σ extra_sd²``: the members'
  spread (ddof = 1) plus, optionally, independent extra terms such as the spread of a member's
  prediction over resampled control populations or the measurement's standard error.

What the interval is checked against (:func:`measured_deltas`) is the *measured* pseudobulk delta
of a held-out condition: the mean of its cells minus the control mean. That target carries its
own sampling noise (tens of cells per condition), which an interval of the model's uncertainty
alone does not include; :func:`measurement_se` estimates that noise from training cells only, so
that it can be added as an ``extra_sd`` and the interval targets what is observed. Neither the
members' spread nor the measurement noise contains the model's systematic error (e.g. a missed
genetic interaction); :func:`sd_scale` fits one factor on validation conditions that widens
the Gaussian interval to its nominal coverage there (split-conformal in spirit), for use on the
test conditions.

All functions are pure: no I/O, no randomness; inputs are validated once by
:func:`stack_members` and :func:`check_truth`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from perturbflow.data.conditions import CONTROL_NAME
from perturbflow.data.io import PerturbationDataset

INTERVAL_METHODS: tuple[str, ...] = ("quantile", "gaussian")
DEFAULT_NOMINALS: tuple[float, ...] = (0.5, 0.8, 0.9)
ALL_CONDITIONS = "all"
COVERAGE_COLUMNS: tuple[str, ...] = (
    "model",
    "interval",
    "subgroup",
    "nominal",
    "coverage",
    "n",
    "n_conditions",
    "mean_width",
)


class CalibrationInputError(ValueError):
    """Ensemble members, truth or interval options do not fit together."""


def stack_members(members: Sequence[pd.DataFrame]) -> np.ndarray:
    """The members as one array ``(S, C, G)``; all must share conditions and genes, in order.

    Raises :class:`CalibrationInputError` for fewer than 2 members (no spread to measure) or
    members that disagree on their conditions (index) or genes (columns).
    """
    if len(members) < 2:
        raise CalibrationInputError(
            f"an ensemble needs at least 2 members to have a spread, got {len(members)}"
        )
    first = members[0]
    for number, member in enumerate(members[1:], start=1):
        if not member.index.equals(first.index):
            raise CalibrationInputError(
                f"member {number} predicts conditions {_preview(member.index)}, member 0 "
                f"{_preview(first.index)}; predict the same conditions in the same order"
            )
        if not member.columns.equals(first.columns):
            raise CalibrationInputError(
                f"member {number} has genes {_preview(member.columns)}, member 0 "
                f"{_preview(first.columns)}; predict the same genes in the same order"
            )
    return np.stack([member.to_numpy(dtype=float) for member in members])  # (S, C, G)


def check_truth(truth: pd.DataFrame, like: pd.DataFrame, what: str = "truth") -> np.ndarray:
    """``truth`` ``(C, G)`` as an array ordered like ``like``; every condition and gene of
    ``like`` must be in it (extra rows or columns are ignored)."""
    missing_rows = like.index.difference(truth.index)
    missing_cols = like.columns.difference(truth.columns)
    if len(missing_rows) or len(missing_cols):
        raise CalibrationInputError(
            f"{what} lacks condition(s) {_preview(missing_rows)} and gene(s) "
            f"{_preview(missing_cols)} that the ensemble predicts"
        )
    return truth.loc[like.index, like.columns].to_numpy(dtype=float)  # (C, G)


def check_nominal(nominal: float) -> float:
    """``nominal`` as a float in the open interval (0, 1)."""
    value = float(nominal)
    if not 0.0 < value < 1.0:
        raise CalibrationInputError(
            f"a nominal coverage must lie strictly between 0 and 1, got {nominal!r}"
        )
    return value


def ensemble_sd(
    members: Sequence[pd.DataFrame], extra_sd: Sequence[pd.DataFrame] = ()
) -> pd.DataFrame:
    """Per condition and gene, ``sqrt(var_between + Σ extra²)`` ``(C, G)``.

    ``var_between`` is the members' variance (ddof = 1); each ``extra_sd`` is an independent
    source of spread with the members' conditions and genes (missing entries are an error).
    """
    stacked = stack_members(members)  # (S, C, G)
    variance = stacked.var(axis=0, ddof=1)  # (C, G)
    for number, extra in enumerate(extra_sd):
        variance = variance + check_truth(extra, members[0], f"extra_sd {number}") ** 2
    return pd.DataFrame(np.sqrt(variance), index=members[0].index, columns=members[0].columns)


def quantile_interval(
    members: Sequence[pd.DataFrame], nominal: float
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Central ``nominal`` interval from the members' empirical quantiles (linear
    interpolation): ``(lower, upper)``, each ``(C, G)``."""
    level = check_nominal(nominal)
    stacked = stack_members(members)  # (S, C, G)
    lower, upper = np.quantile(stacked, [(1 - level) / 2, (1 + level) / 2], axis=0)  # (C, G)
    return _frame(lower, members[0]), _frame(upper, members[0])


def gaussian_interval(
    members: Sequence[pd.DataFrame],
    nominal: float,
    extra_sd: Sequence[pd.DataFrame] = (),
    scale: float = 1.0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``mean ± z · scale · sd`` around the members' mean, ``sd`` from :func:`ensemble_sd`;
    ``z`` is the standard normal's ``(1 + nominal)/2`` quantile. Returns ``(lower, upper)``."""
    level = check_nominal(nominal)
    if not scale > 0:
        raise CalibrationInputError(f"scale must be positive, got {scale!r}")
    centre = stack_members(members).mean(axis=0)  # (C, G)
    half = stats.norm.ppf((1 + level) / 2) * scale * ensemble_sd(members, extra_sd).to_numpy()
    return _frame(centre - half, members[0]), _frame(centre + half, members[0])


def interval(
    members: Sequence[pd.DataFrame],
    nominal: float,
    method: str = "gaussian",
    extra_sd: Sequence[pd.DataFrame] = (),
    scale: float = 1.0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ``method`` interval (one of :data:`INTERVAL_METHODS`); ``extra_sd`` and ``scale``
    apply to ``gaussian`` only."""
    if method == "quantile":
        if extra_sd or scale != 1.0:
            raise CalibrationInputError("extra_sd and scale apply to gaussian intervals only")
        return quantile_interval(members, nominal)
    if method == "gaussian":
        return gaussian_interval(members, nominal, extra_sd, scale)
    raise CalibrationInputError(
        f"unknown interval method {method!r}; valid methods: {', '.join(INTERVAL_METHODS)}"
    )


def sd_scale(
    members: Sequence[pd.DataFrame],
    truth: pd.DataFrame,
    nominal: float,
    extra_sd: Sequence[pd.DataFrame] = (),
) -> float:
    """The factor on ``sd`` that makes the Gaussian ``nominal`` interval cover exactly
    ``nominal`` of ``truth``: the ``nominal`` quantile of ``|truth − mean| / sd`` divided by
    ``z``. Fit it on conditions the model did not train on (validation) and apply it to others
    (test); entries with ``sd = 0`` are left out."""
    level = check_nominal(nominal)
    centre = stack_members(members).mean(axis=0)  # (C, G)
    target = check_truth(truth, members[0])  # (C, G)
    sd = ensemble_sd(members, extra_sd).to_numpy()  # (C, G)
    usable = sd > 0
    if not usable.any():
        raise CalibrationInputError("every sd is zero; an interval cannot be scaled")
    ratio = np.abs(target - centre)[usable] / sd[usable]
    return float(np.quantile(ratio, level) / stats.norm.ppf((1 + level) / 2))


def coverage_table(
    members: Sequence[pd.DataFrame],
    truth: pd.DataFrame,
    *,
    model: str,
    nominals: Sequence[float] = DEFAULT_NOMINALS,
    method: str = "gaussian",
    extra_sd: Sequence[pd.DataFrame] = (),
    scale: float | Mapping[float, float] = 1.0,
    subgroups: Mapping[str, str] | None = None,
    label: str | None = None,
) -> pd.DataFrame:
    """Empirical coverage of the ensemble's intervals, long format (:data:`COVERAGE_COLUMNS`).

    One row per nominal level and subgroup, plus the subgroup ``all``: ``coverage`` is the share
    of (condition, gene) entries whose ``truth`` lies in the closed interval, ``n`` the number of
    entries, ``n_conditions`` the conditions, ``mean_width`` the mean of ``upper − lower``.
    ``subgroups`` maps a condition to its group (conditions it omits count only in ``all``);
    ``scale`` is one factor or one per nominal level (:func:`sd_scale`); ``label`` names the
    interval in the ``interval`` column (default: ``method``).
    """
    levels = [check_nominal(level) for level in nominals]
    if not levels:
        raise CalibrationInputError("give at least one nominal coverage level")
    stack_members(members)  # validates before any work
    target = check_truth(truth, members[0])  # (C, G)
    conditions = members[0].index
    groups = {ALL_CONDITIONS: np.ones(len(conditions), dtype=bool)}
    for group in dict.fromkeys((subgroups or {}).values()):
        groups[group] = np.array([(subgroups or {}).get(name) == group for name in conditions])
    rows = []
    for level in levels:
        factor = scale[level] if isinstance(scale, Mapping) else scale
        lower, upper = interval(members, level, method, extra_sd, factor)
        inside = (target >= lower.to_numpy()) & (target <= upper.to_numpy())  # (C, G)
        width = (upper - lower).to_numpy()  # (C, G)
        for group, rows_in in groups.items():
            if not rows_in.any():
                continue
            rows.append(
                {
                    "model": model,
                    "interval": label or method,
                    "subgroup": group,
                    "nominal": level,
                    "coverage": float(inside[rows_in].mean()),
                    "n": int(inside[rows_in].size),
                    "n_conditions": int(rows_in.sum()),
                    "mean_width": float(width[rows_in].mean()),
                }
            )
    return pd.DataFrame(rows, columns=COVERAGE_COLUMNS)


BUDGET_COLUMNS: tuple[str, ...] = ("model", "term", "rms")


def uncertainty_budget(
    members: Sequence[pd.DataFrame],
    truth: pd.DataFrame,
    *,
    model: str,
    extra_sd: Mapping[str, pd.DataFrame] | None = None,
) -> pd.DataFrame:
    """Why intervals miss, long format (:data:`BUDGET_COLUMNS`): the root mean square over
    entries of the error (``truth`` − members' mean, term ``error``), of the members' sd
    (``member_sd``) and of each named ``extra_sd``. Calibrated Gaussian intervals need
    ``error² ≈ member_sd² + Σ extra²``; what the sds leave out is systematic error."""
    stacked = stack_members(members)  # (S, C, G)
    error = check_truth(truth, members[0]) - stacked.mean(axis=0)  # (C, G)
    terms = {"error": error, "member_sd": stacked.std(axis=0, ddof=1)}
    for name, extra in (extra_sd or {}).items():
        terms[name] = check_truth(extra, members[0], f"extra_sd {name!r}")
    rows = [
        {"model": model, "term": term, "rms": float(np.sqrt(np.mean(values**2)))}
        for term, values in terms.items()
    ]
    return pd.DataFrame(rows, columns=BUDGET_COLUMNS)


def measured_deltas(dataset: PerturbationDataset, conditions: Sequence[str]) -> pd.DataFrame:
    """The observed pseudobulk delta ``(C, G)``: each condition's mean expression minus the
    control mean — the quantity an interval is checked against."""
    control = dataset.control_expression().mean(axis=0)  # (G,)
    means = dataset.mean_expression(list(conditions))  # (C, G)
    return means - control


def measurement_se(
    dataset: PerturbationDataset, conditions: Sequence[str], reference: Sequence[str]
) -> pd.DataFrame:
    """Standard error of each measured delta ``(C, G)`` from training cells only.

    ``se² = s²_within / n_c + s²_control / n_control``: ``s²_within`` is each gene's
    within-condition variance pooled over the perturbed ``reference`` conditions (the training
    conditions, so no held-out cell is read), ``n_c`` the number of cells a condition has and
    ``s²_control`` the control cells' variance.
    """
    control = dataset.control_expression()  # (n_ctrl, G)
    perturbed = [name for name in reference if name != CONTROL_NAME]
    if not perturbed:
        raise CalibrationInputError("measurement_se needs at least one perturbed reference")
    squares = np.zeros(dataset.n_genes)
    dof = 0
    for name in perturbed:
        cells = dataset.expression(name)  # (n, G)
        squares += ((cells - cells.mean(axis=0)) ** 2).sum(axis=0)
        dof += len(cells) - 1
    within = squares / max(dof, 1)  # (G,)
    sizes = dataset.cells_per_condition.reindex(list(conditions)).to_numpy(dtype=float)  # (C,)
    if np.isnan(sizes).any():
        raise CalibrationInputError(
            f"conditions {_preview([c for c in conditions if c not in dataset.conditions])} "
            "are not in the dataset"
        )
    variance = within[None, :] / sizes[:, None] + control.var(axis=0, ddof=1) / len(control)
    return pd.DataFrame(np.sqrt(variance), index=list(conditions), columns=dataset.genes)


def _frame(values: np.ndarray, like: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(values, index=like.index, columns=like.columns)


def _preview(items, limit: int = 5) -> str:
    items = [str(item) for item in items]
    return ", ".join(items[:limit]) + (" …" if len(items) > limit else "") if items else "none"
