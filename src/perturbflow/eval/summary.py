"""The summary a method developer reads: mean ± sd over seeds, comparisons with a reference.

:func:`benchmark_summary` turns the long results table of :func:`perturbflow.eval.loop.run` into
mean ± sd over seeds per subgroup, run and metric, with win rate and paired difference against
the additive baseline and the fraction of the noise ceiling reached.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from perturbflow.eval.evaluate import NOISE_CEILING_MODEL
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
)


def benchmark_summary(results: pd.DataFrame, reference: str = REFERENCE_MODEL) -> pd.DataFrame:
    """Mean ± sd over seeds of per-seed subgroup means, with comparisons to ``reference``.

    - ``win_rate_vs_additive``: over (condition, seed) pairs both models scored, the fraction
      where the model is strictly better than the reference (ties count half);
    - ``paired_diff_vs_additive``: mean of (model − reference) over those pairs, signed so that
      positive is better for every metric;
    - ``fraction_of_ceiling``: the model's mean divided by the noise ceiling's for metrics where
      higher is better, and ceiling / model where lower is better (1 = as good as the data allow).
    """
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
    fractions = {}
    if ceiling is not None:
        for (subgroup, model, metric), row in stats.iterrows():
            top = ceiling.get((subgroup, metric), np.nan)
            if METRICS[metric].higher_is_better:
                fractions[(subgroup, model, metric)] = row["mean"] / top if top else np.nan
            else:
                fractions[(subgroup, model, metric)] = top / row["mean"] if row["mean"] else np.nan
    stats["fraction_of_ceiling"] = pd.Series(fractions)
    return stats.reset_index()[list(SUMMARY_COLUMNS)]
