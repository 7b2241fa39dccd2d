"""What to test next: untested gene pairs ranked by what measuring them would teach.

A screen is run to find genetic interactions. For every pair of genes with a measured single
whose double was not measured, an ensemble of one model (fitted on every measured condition,
members differing in model seed and bootstrap resample of the cells) predicts the double's
change. Two things make a pair worth an experiment:

- **interaction**: the predicted change minus the additive expectation (the sum of the two
  singles' measured changes), as a root mean square over genes — a predicted synergy,
  buffering or epistasis;
- **uncertainty**: the members' disagreement (root mean square over genes of their sd) — where
  the model does not know, a measurement teaches it most.

``score = interaction + kappa · uncertainty`` (an upper confidence bound; ``kappa=0`` ranks by
predicted interaction alone, a large ``kappa`` by uncertainty). Each row says why: the kind of
deviation (``c``, the least-squares scale of the prediction on the additive expectation: below
0.8 buffering, above 1.2 synergy, otherwise a change of shape) and the genes that move most.
The ranking is only as good as the model's interaction predictions, which
``benchmarks/design.py`` measures by simulated rounds of experiments.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from perturbflow.data.conditions import CONTROL_NAME, format_condition, parse_condition
from perturbflow.data.io import PerturbationDataset
from perturbflow.data.splits import Split
from perturbflow.eval.ensemble import fit_ensemble
from perturbflow.eval.loop import RunSpec

logger = logging.getLogger(__name__)

__all__ = ["DESIGN_COLUMNS", "candidate_pairs", "rank_pairs"]

DESIGN_COLUMNS = (
    "rank",
    "condition",
    "gene_a",
    "gene_b",
    "score",
    "interaction",
    "uncertainty",
    "additive_scale",
    "kind",
    "top_genes",
    "reason",
)


def candidate_pairs(dataset: PerturbationDataset, genes: Sequence[str] | None = None) -> list[str]:
    """Pairs of genes with a measured single whose double is not measured (canonical names);
    ``genes`` restricts the pairs to those genes."""
    measured = set(dataset.conditions)
    singles = sorted(
        g for name in measured if len(parse_condition(name)) == 1 for g in parse_condition(name)
    )
    if genes is not None:
        unknown = sorted(set(genes) - set(singles))
        if unknown:
            raise ValueError(
                f"gene(s) {unknown[:8]} have no measured single, so their pairs cannot be "
                "ranked against an additive expectation"
            )
        singles = sorted(genes)
    pairs = [format_condition({a, b}) for a, b in itertools.combinations(singles, 2)]
    return [pair for pair in pairs if pair not in measured]


def rank_pairs(
    dataset: PerturbationDataset,
    spec: RunSpec,
    *,
    candidates: Sequence[str] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    kappa: float = 1.0,
    n_cells: int = 200,
    n_top_genes: int = 5,
) -> pd.DataFrame:
    """Candidate doubles ranked by ``interaction + kappa · uncertainty`` (see the module doc).

    ``spec`` is the model (e.g. ``RunSpec("combinator", "combinator")``), fitted once per seed on
    every measured condition with bootstrap-resampled cells. Returns one row per candidate with
    :data:`DESIGN_COLUMNS`, best first.
    """
    if kappa < 0:
        raise ValueError(f"kappa must be ≥ 0, got {kappa}")
    if len(seeds) < 2:
        raise ValueError("rank_pairs needs at least 2 seeds: the uncertainty is their spread")
    names = list(candidates) if candidates is not None else candidate_pairs(dataset)
    if not names:
        raise ValueError("no untested pair to rank: every pair of measured singles was measured")
    bad = [n for n in names if len(parse_condition(n)) != 2]
    if bad:
        raise ValueError(f"candidates must be pairs of genes, got {bad[:5]}")
    measured = [name for name in dataset.conditions if name != CONTROL_NAME]
    split = Split(kind="design", seed=0, train=(CONTROL_NAME, *measured), val=(), test=())
    ensemble = fit_ensemble(
        dataset, split, spec, names, seeds=seeds, n_cells=n_cells, bootstrap=True
    )
    stacked = np.stack([m.loc[names].to_numpy() for m in ensemble.members])  # (S, C, G)
    mean, spread = stacked.mean(axis=0), stacked.std(axis=0, ddof=1)  # (C, G) each
    singles = dataset.mean_expression(
        sorted({g for n in names for g in parse_condition(n)})
    ) - dataset.control_expression().mean(axis=0)
    genes = np.asarray(dataset.genes)
    rows = []
    for i, name in enumerate(names):
        gene_a, gene_b = sorted(parse_condition(name))
        additive = (singles.loc[gene_a] + singles.loc[gene_b]).to_numpy()  # (G,)
        deviation = mean[i] - additive  # (G,)
        interaction = float(np.sqrt(np.mean(deviation**2)))
        uncertainty = float(np.sqrt(np.mean(spread[i] ** 2)))
        norm = float(additive @ additive)
        scale = float(mean[i] @ additive / norm) if norm > 0 else float("nan")
        kind = (
            ("buffering" if scale < 0.8 else "synergy" if scale > 1.2 else "shape")
            if np.isfinite(scale)
            else "no additive change"
        )
        top = genes[np.argsort(-np.abs(deviation), kind="stable")[:n_top_genes]]
        rows.append(
            {
                "condition": name,
                "gene_a": gene_a,
                "gene_b": gene_b,
                "score": interaction + kappa * uncertainty,
                "interaction": interaction,
                "uncertainty": uncertainty,
                "additive_scale": scale,
                "kind": kind,
                "top_genes": ",".join(map(str, top)),
                "reason": _reason(kind, scale, interaction, uncertainty, top),
            }
        )
    table = pd.DataFrame(rows).sort_values(["score", "condition"], ascending=[False, True])
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    logger.info(
        "ranked %d untested pair(s) with %s (%d members); best: %s",
        len(table),
        spec.label,
        len(seeds),
        table["condition"].iloc[0],
    )
    return table.reset_index(drop=True)[list(DESIGN_COLUMNS)]


def _reason(kind: str, scale: float, interaction: float, uncertainty: float, top) -> str:
    what = {
        "buffering": f"predicted buffering (change {scale:.2f} × the additive sum)",
        "synergy": f"predicted synergy (change {scale:.2f} × the additive sum)",
        "shape": "predicted change of shape beyond the additive sum",
        "no additive change": "the singles change nothing; any change is an interaction",
    }[kind]
    driver = "uncertain prediction" if uncertainty > interaction else "predicted interaction"
    return f"{what}; mostly {driver}; genes moving most: {', '.join(map(str, top[:3]))}"
