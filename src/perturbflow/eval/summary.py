"""The summary a method developer reads: mean ± sd over seeds, comparisons with a reference.

:func:`benchmark_summary` turns the long results table of :func:`perturbflow.eval.loop.run` into
mean ± sd over seeds per subgroup, run and metric, with win rate and paired difference against
the additive baseline, the fraction of the noise ceiling reached and the fraction of the gap
between the additive baseline and the ceiling that a model closes, where those fractions mean
something.
"""

from __future__ import annotations

import zlib

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
    "gap_closed",
    "gap_closed_low",
    "gap_closed_high",
    "ceiling_note",
)
# A gap (ceiling − reference) within this many float64 ulps of the values' scale closes nothing.
_GAP_ULPS = 64


def benchmark_summary(
    results: pd.DataFrame,
    reference: str = REFERENCE_MODEL,
    *,
    sizes: pd.DataFrame | None = None,
    n_bootstrap: int = 1000,
    bootstrap_seed: int = 0,
) -> pd.DataFrame:
    """Mean ± sd over seeds of per-seed subgroup means, with comparisons to ``reference``.

    - ``win_rate_vs_additive``: over (condition, seed) pairs both models scored, the fraction
      where the model is strictly better than the reference (ties count half);
    - ``paired_diff_vs_additive``: mean of (model − reference) over those pairs, signed so that
      positive is better for every metric;
    - ``fraction_of_ceiling``: the model's mean divided by the noise ceiling's for metrics where
      higher is better, and ceiling / model where lower is better (1 = as good as the data allow);
    - ``gap_closed``: ``(model − reference) / (ceiling − reference)`` from the (condition, seed)
      pairs where the model, the reference and the noise ceiling all have a value, as a ratio of
      the means over those pairs: 0 = no better than the additive baseline, 1 = as good as the
      data allow, the same reading for every metric (for lower-is-better metrics both differences
      are negative when the model improves on the reference). It answers how much of what the
      additive baseline leaves on the table a model recovers, which neither the paired difference
      (no scale) nor ``fraction_of_ceiling`` (no baseline) does;
    - ``gap_closed_low``, ``gap_closed_high``: 95% percentile bootstrap interval of
      ``gap_closed`` over conditions: ``n_bootstrap`` resamples of the subgroup's conditions with
      replacement, each keeping all seeds of a drawn condition. Seeded per (subgroup, model,
      metric) from ``bootstrap_seed``, so deterministic and independent of the other groups.
      ``nan`` when some resample closes no gap (the ratio is unbounded there);
    - all three are ``nan`` where the reference or the ceiling has no paired value, where the
      ceiling is not informative (``ceiling_note``), or where the ceiling is not better than the
      reference on the pairs (no gap to close);
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
    n_bootstrap, bootstrap_seed
        Resamples and seed of the ``gap_closed`` interval.

    Returns
    -------
    Columns :data:`SUMMARY_COLUMNS`; ``attrs["perturbflow"]`` records the reference model and
    the bootstrap.
    """
    if n_bootstrap < 1:
        raise EvaluationError(f"n_bootstrap must be at least 1, got {n_bootstrap}")
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
    gaps = _gaps_closed(table, reference, set(notes), n_bootstrap, bootstrap_seed)
    for column in ("gap_closed", "gap_closed_low", "gap_closed_high"):
        stats[column] = pd.Series(
            {key: values[column] for key, values in gaps.items()}, dtype=float
        )
    summary = stats.reset_index()
    summary["ceiling_note"] = [
        notes.get((subgroup, metric), "")
        for subgroup, metric in zip(summary["subgroup"], summary["metric"], strict=True)
    ]
    summary = summary[list(SUMMARY_COLUMNS)]
    summary.attrs["perturbflow"] = {
        "function": "benchmark_summary",
        "reference": reference,
        "gap_closed": "(model - reference) / (noise_ceiling - reference), means over paired "
        "(condition, seed) values",
        "gap_closed_interval": f"95% percentile bootstrap over conditions, {n_bootstrap} "
        f"resamples, seed {bootstrap_seed}",
    }
    return summary


def _gaps_closed(
    table: pd.DataFrame,
    reference: str,
    uninformative: set[tuple[str, str]],
    n_bootstrap: int,
    bootstrap_seed: int,
) -> dict[tuple[str, str, str], dict[str, float]]:
    """``(subgroup, model, metric) → {gap_closed, gap_closed_low, gap_closed_high}``.

    Only groups with paired values get an entry; the caller fills the rest with ``nan``.
    """
    models = set(table["model"])
    if reference not in models or NOISE_CEILING_MODEL not in models:
        return {}
    keys = ["subgroup", "metric", "condition", "seed"]
    wide = table.pivot_table(index=keys, columns="model", values="value", aggfunc="mean")
    wide = wide.dropna(subset=[reference, NOISE_CEILING_MODEL])  # (pairs, models)
    gaps: dict[tuple[str, str, str], dict[str, float]] = {}
    for (subgroup, metric), rows in wide.groupby(level=["subgroup", "metric"], sort=False):
        if (subgroup, metric) in uninformative:
            continue
        base = rows[reference].to_numpy(dtype=np.float64)  # (pairs,)
        top = rows[NOISE_CEILING_MODEL].to_numpy(dtype=np.float64)  # (pairs,)
        conditions = rows.index.get_level_values("condition")
        for model in rows.columns:
            mine = rows[model].to_numpy(dtype=np.float64)  # (pairs,)
            kept = ~np.isnan(mine)
            if not kept.any():
                continue
            gaps[(subgroup, model, metric)] = _gap_closed(
                mine[kept] - base[kept],
                top[kept] - base[kept],
                np.asarray(conditions[kept]),
                METRICS[metric].higher_is_better,
                scale=float(np.max(np.abs(np.concatenate([base, top])), initial=1.0)),
                rng=np.random.default_rng(
                    [bootstrap_seed, zlib.crc32(f"{subgroup}\0{model}\0{metric}".encode())]
                ),
                n_bootstrap=n_bootstrap,
            )
    return gaps


def _gap_closed(
    gain: np.ndarray,
    gap: np.ndarray,
    conditions: np.ndarray,
    higher_is_better: bool,
    *,
    scale: float,
    rng: np.random.Generator,
    n_bootstrap: int,
) -> dict[str, float]:
    """``sum(gain) / sum(gap)`` over pairs ``(P,)`` and its bootstrap interval over conditions.

    ``gain`` = model − reference, ``gap`` = ceiling − reference per (condition, seed) pair. The
    ratio of sums equals the ratio of means over the same pairs. ``gap`` is oriented so that a
    ceiling better than the reference is positive; a sum within rounding of 0 or below closes no
    gap (``nan``).
    """
    sign = 1.0 if higher_is_better else -1.0
    gain, gap = sign * gain, sign * gap  # (P,), (P,): positive = better than the reference
    tolerance = _GAP_ULPS * np.finfo(np.float64).eps * scale * len(gap)
    missing = {"gap_closed": np.nan, "gap_closed_low": np.nan, "gap_closed_high": np.nan}
    if not gap.sum() > tolerance:
        return missing
    # Per-condition sums (over seeds): the bootstrap draws conditions, not pairs.
    names, index = np.unique(conditions, return_inverse=True)
    gain_by_condition = np.bincount(index, weights=gain, minlength=len(names))  # (K,)
    gap_by_condition = np.bincount(index, weights=gap, minlength=len(names))  # (K,)
    draws = rng.integers(0, len(names), size=(n_bootstrap, len(names)))  # (B, K)
    gained = gain_by_condition[draws].sum(axis=1)  # (B,)
    closable = gap_by_condition[draws].sum(axis=1)  # (B,)
    value = float(gain.sum() / gap.sum())
    if not np.all(closable > tolerance):
        return missing | {"gap_closed": value}
    low, high = np.percentile(gained / closable, [2.5, 97.5])
    return {"gap_closed": value, "gap_closed_low": float(low), "gap_closed_high": float(high)}


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
