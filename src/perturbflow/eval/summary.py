"""The summary a method developer reads: mean ± sd over seeds, comparisons with a reference.

:func:`benchmark_summary` turns the long results table of :func:`perturbflow.eval.loop.run` into
mean ± sd over seeds per subgroup, run and metric, with win rate and paired difference against
the additive baseline and the fraction of the noise ceiling reached, where that fraction means
something.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from perturbflow.eval.evaluate import NOISE_CEILING_MODEL, SIZE_COLUMNS, EvaluationError
from perturbflow.eval.metrics import METRICS

REFERENCE_MODEL = "additive"
SUMMARY_COLUMNS = (
    "subgroup",
    "model",
    "metric",
    "mean",
    "sd",
    "n_seeds",
    "n_conditions",
    "win_rate_vs_additive",
    "paired_diff_vs_additive",
    "fraction_of_ceiling",
    "ceiling_note",
)


def benchmark_summary(
    results: pd.DataFrame,
    reference: str = REFERENCE_MODEL,
    *,
    sizes: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Mean ± sd over seeds of per-seed subgroup means, with comparisons to ``reference``.

    - ``win_rate_vs_additive``: over (condition, seed) pairs both models scored, the fraction
      where the model is strictly better than the reference (ties count half);
    - ``paired_diff_vs_additive``: mean of (model − reference) over those pairs, signed so that
      positive is better for every metric;
    - ``fraction_of_ceiling``: the model's mean divided by the noise ceiling's for metrics where
      higher is better, and ceiling / model where lower is better (1 = as good as the data allow);
    - ``ceiling_note``: empty, or why ``fraction_of_ceiling`` is ``nan`` for every model of that
      (subgroup, metric): some model's mean beats the ceiling's, or a higher-is-better ceiling is
      not positive. Either way the ceiling is no bound there (too few cells or genes to estimate
      it, or a metric it does not correct, see :func:`perturbflow.eval.evaluate.noise_ceiling`),
      and a fraction above 1 would read as better than the data allow.

    Parameters
    ----------
    results
        Long table of :func:`perturbflow.eval.evaluate.evaluate` and ``noise_ceiling`` rows.
    reference
        Model the win rate and paired difference compare with.
    sizes
        Optional :func:`perturbflow.eval.evaluate.condition_sizes` table (columns
        :data:`perturbflow.eval.evaluate.SIZE_COLUMNS`; a condition may repeat, e.g. once per
        seed): the note then names the subgroup's real cells per condition and genes.
    """
    if sizes is not None:
        absent = [column for column in SIZE_COLUMNS if column not in sizes.columns]
        if absent:
            raise EvaluationError(
                f"sizes lack column(s) {absent}; pass perturbflow.eval.evaluate.condition_sizes("
                "dataset, conditions), with columns " + str(list(SIZE_COLUMNS))
            )
    table = results.dropna(subset=["value"])
    per_seed = table.groupby(["subgroup", "model", "metric", "seed"])["value"].mean()
    stats = per_seed.groupby(["subgroup", "model", "metric"]).agg(["mean", "std", "count"])
    stats.columns = ["mean", "sd", "n_seeds"]
    conditions = table.groupby(["subgroup", "model", "metric"])["condition"].nunique()
    stats["n_conditions"] = conditions
    keyed = table.set_index(["subgroup", "metric", "condition", "seed"])
    wins, diffs = {}, {}
    if reference in set(table["model"]):
        ref = keyed[keyed["model"] == reference]["value"]
        for model in table["model"].unique():
            mine = keyed[keyed["model"] == model]["value"]
            joined = pd.concat([mine.rename("model"), ref.rename("ref")], axis=1, join="inner")
            for (subgroup, metric), rows in joined.groupby(level=["subgroup", "metric"]):
                sign = 1.0 if METRICS[metric].higher_is_better else -1.0
                gain = sign * (rows["model"] - rows["ref"])
                wins[(subgroup, model, metric)] = float(((gain > 0) + 0.5 * (gain == 0)).mean())
                diffs[(subgroup, model, metric)] = float(gain.mean())
    stats["win_rate_vs_additive"] = pd.Series(wins)
    stats["paired_diff_vs_additive"] = pd.Series(diffs)
    ceiling = (
        stats.xs(NOISE_CEILING_MODEL, level="model")["mean"]
        if NOISE_CEILING_MODEL in set(table["model"])
        else None
    )
    fractions, notes = {}, {}
    if ceiling is not None:
        for (subgroup, model, metric), row in stats.iterrows():
            top = ceiling.get((subgroup, metric), np.nan)
            if METRICS[metric].higher_is_better:
                fractions[(subgroup, model, metric)] = row["mean"] / top if top else np.nan
            else:
                fractions[(subgroup, model, metric)] = top / row["mean"] if row["mean"] else np.nan
        counts = _subgroup_sizes(table, sizes)
        for subgroup, metric in ceiling.index:
            reason = _uninformative(stats.loc[subgroup].xs(metric, level="metric")["mean"], metric)
            if reason:
                where = counts.get(subgroup, "cell and gene counts not given")
                notes[(subgroup, metric)] = f"ceiling not informative here ({where}): {reason}"
        for subgroup, model, metric in stats.index:
            if (subgroup, metric) in notes:
                fractions[(subgroup, model, metric)] = np.nan
    stats["fraction_of_ceiling"] = pd.Series(fractions, dtype=np.float64)
    summary = stats.reset_index()
    summary["ceiling_note"] = [
        notes.get((subgroup, metric), "")
        for subgroup, metric in zip(summary["subgroup"], summary["metric"], strict=True)
    ]
    return summary[list(SUMMARY_COLUMNS)]


def _uninformative(means: pd.Series, metric: str) -> str:
    """Why the ceiling (``means[NOISE_CEILING_MODEL]``) bounds nothing, or ``""``.

    ``means`` holds one subgroup's mean per model for ``metric``.
    """
    top = means[NOISE_CEILING_MODEL]
    others = means.drop(NOISE_CEILING_MODEL).dropna()
    higher = METRICS[metric].higher_is_better
    beaten = others[others > top] if higher else others[others < top]
    if len(beaten):
        return f"{', '.join(map(str, beaten.index))} beat{'s' if len(beaten) == 1 else ''} it"
    if higher and not top > 0:
        return "the ceiling is not positive"
    return ""


def _subgroup_sizes(table: pd.DataFrame, sizes: pd.DataFrame | None) -> dict[str, str]:
    """``subgroup → "12 cells per condition, 30 genes"`` over the subgroup's scored conditions."""
    if sizes is None:
        return {}
    sizes = sizes[list(SIZE_COLUMNS)].drop_duplicates()
    described = {}
    for subgroup, rows in table.groupby("subgroup"):
        known = sizes[sizes["condition"].isin(set(rows["condition"]))]
        if known.empty:
            continue
        described[subgroup] = (
            f"{_spread(known['n_cells'])} cells per condition, {_spread(known['n_genes'])} genes"
        )
    return described


def _spread(values: pd.Series) -> str:
    low, high = int(values.min()), int(values.max())
    if low == high:
        return str(low)
    return f"{low}–{high} (median {float(values.median()):g})"
