"""Scoring predicted edges against a true network: AUPRC, AUROC, their ratios to chance, and
early precision (BEELINE's EPR, Pratapa et al., Nature Methods 2020).

Every metric ranks the same **candidates**: each (regulator, target) pair with the regulator
among the scored regulators and the target among the dataset's genes, target ≠ regulator. A
candidate without a predicted edge scores 0. Results are long tables (``method, regulator,
metric, value``), one row per metric, overall (``regulator == "all"``) and per regulator.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

from perturbflow.grn.network import (
    GRNInputError,
    NetworkCoverageError,
    _gene_list,
    read_network,
    require_genes,
    validate_edges,
)

logger = logging.getLogger(__name__)

__all__ = ["METRICS", "epr_permutation_pvalue", "score_edges"]

ALL = "all"
# Metric → best value (None: a count, no direction).
METRICS: dict[str, float | None] = {
    "auprc": 1.0,
    "auroc": 1.0,
    "auprc_ratio": None,
    "epr": None,
    "n_true": None,
    "n_candidates": None,
}


def score_edges(
    edges: pd.DataFrame,
    truth: pd.DataFrame,
    *,
    genes: Sequence[str],
    regulators: Sequence[str] | None = None,
    method: str = "method",
) -> pd.DataFrame:
    """AUPRC, AUROC, AUPRC ratio, EPR and counts of ``edges`` against the ``truth`` network.

    - Candidates: every (regulator, target) with the regulator in ``regulators`` (default: the
      sources of ``edges``; a named regulator must be among ``genes`` or those sources, else
      :class:`~perturbflow.grn.network.UnknownRegulatorError`), the target in ``genes`` and
      target ≠ regulator. Candidates without a predicted edge score 0; predicted edges outside
      the candidates are ignored, and so are true edges (both counted in a log line).
    - ``auprc``: average precision (scikit-learn's step-wise definition); ``auroc``: area under
      the ROC curve; ``auprc_ratio`` = AUPRC / density and ``epr`` = precision among the top
      ``k`` candidates / density, where ``k`` = the number of true candidates and density =
      ``n_true / n_candidates`` (the precision of a random ranking, so both ratios are 1 by
      chance); ``n_true`` and ``n_candidates`` are counts.
    - Ties, deterministic throughout: AUPRC and AUROC treat a block of tied scores as one
      threshold (scikit-learn: AP uses the precision after the whole block, AUROC counts a tied
      true/false pair as one half); for EPR a tie block straddling rank ``k`` contributes its
      fraction of true edges times the slots it fills, the expected precision under random
      tie-breaking. Candidates scoring 0 (no prediction) form one tie block at the bottom.

    Per-regulator rows use that regulator's candidates only and exist for regulators with ≥ 1
    true edge among them; AUROC is NaN when all its candidates are true. Raises
    :class:`~perturbflow.grn.network.NetworkCoverageError` when no candidate is a true edge.
    Returns columns ``method, regulator, metric, value``; the ``all`` rows come first, then
    regulators in sorted order.
    """
    table = _candidates(edges, truth, genes=genes, regulators=regulators)
    rows = [_metric_rows(method, ALL, table["score"].to_numpy(), table["label"].to_numpy())]
    for regulator, block in table.groupby("regulator", sort=True):
        labels = block["label"].to_numpy()
        if labels.any():
            rows.append(_metric_rows(method, str(regulator), block["score"].to_numpy(), labels))
    return pd.DataFrame(
        [row for block in rows for row in block], columns=["method", "regulator", "metric", "value"]
    )


def epr_permutation_pvalue(
    edges: pd.DataFrame,
    truth: pd.DataFrame,
    *,
    genes: Sequence[str],
    regulators: Sequence[str] | None = None,
    n_permutations: int = 1000,
    seed: int = 0,
) -> float:
    """One-sided permutation p-value of the overall EPR of ``edges``.

    Null: the true labels shuffled among each regulator's candidate targets, which keeps each
    regulator's number of true targets (and so ``k`` and the density) while breaking the link
    between scores and truth. ``p = (1 + #{null EPR ≥ observed}) / (1 + n_permutations)``.
    Candidates and ties as in :func:`score_edges`.
    """
    if isinstance(n_permutations, bool) or not isinstance(n_permutations, int | np.integer):
        raise GRNInputError(f"n_permutations must be an integer ≥ 1, got {n_permutations!r}")
    if n_permutations < 1:
        raise GRNInputError(f"n_permutations must be an integer ≥ 1, got {n_permutations!r}")
    table = _candidates(edges, truth, genes=genes, regulators=regulators)
    labels = table["label"].to_numpy()
    weights = _top_k_weights(table["score"].to_numpy(), int(labels.sum()))  # (C,)
    observed = float(labels @ weights)
    rng = np.random.default_rng(seed)
    null = np.zeros(n_permutations)  # (P,) true edges among the top k
    for _, block in table.groupby("regulator", sort=True):
        index = block.index.to_numpy()
        if not labels[index].any():
            continue
        shuffled = rng.permuted(np.tile(labels[index], (n_permutations, 1)), axis=1)  # (P, c)
        null += shuffled @ weights[index]
    # Ties in floating sums: count null values within rounding of the observed one as ≥.
    exceed = int((null >= observed - 1e-9).sum())
    pvalue = (1 + exceed) / (1 + n_permutations)
    logger.info(
        "EPR permutation test: %.3g true edges in the top k (null mean %.3g) over %d "
        "permutations, p = %.3g",
        observed,
        float(null.mean()),
        n_permutations,
        pvalue,
    )
    return pvalue


def _candidates(
    edges: pd.DataFrame,
    truth: pd.DataFrame,
    *,
    genes: Sequence[str],
    regulators: Sequence[str] | None,
) -> pd.DataFrame:
    """Candidate pairs (``regulator, target, score, label``), regulators sorted, targets in
    the order of ``genes``."""
    edges = validate_edges(edges, what="predicted edges")
    network = read_network(truth)
    gene_list = _gene_list(genes, "genes")
    scored = sorted(pd.unique(edges["source"]))
    if regulators is None:
        chosen = scored
        if not chosen:
            raise GRNInputError("predicted edges are empty; name the regulators to score")
    else:
        chosen = require_genes(
            regulators,
            set(gene_list) | set(scored),
            what="regulator",
            where="the genes or the predicted edges",
        )
    chosen = sorted(chosen)
    source = np.repeat(np.asarray(chosen, dtype=object), len(gene_list))  # (R*G,)
    target = np.tile(np.asarray(gene_list, dtype=object), len(chosen))  # (R*G,)
    keep = source != target
    table = pd.DataFrame({"regulator": source[keep], "target": target[keep]})
    pairs = pd.MultiIndex.from_frame(table)
    scores = pd.Series(
        edges["score"].to_numpy(), index=pd.MultiIndex.from_frame(edges[["source", "target"]])
    )
    table["score"] = scores.reindex(pairs).fillna(0.0).to_numpy()
    true_pairs = pd.MultiIndex.from_frame(network[["source", "target"]])
    table["label"] = pairs.isin(true_pairs)
    n_true = int(table["label"].sum())
    n_outside_truth = len(network) - n_true
    n_outside_edges = len(edges) - int(
        pd.MultiIndex.from_frame(edges[["source", "target"]]).isin(pairs).sum()
    )
    logger.info(
        "scoring %d candidates (%d regulators × %d genes): %d true; ignored %d true edges and %d "
        "predicted edges outside the candidates",
        len(table),
        len(chosen),
        len(gene_list),
        n_true,
        n_outside_truth,
        n_outside_edges,
    )
    if n_true == 0:
        raise NetworkCoverageError(
            f"none of the {len(table)} candidates (regulators {chosen[:5]}… × the {len(gene_list)} "
            f"genes) is a true edge ({len(network)} true edges, e.g. "
            f"{network['source'].iloc[0]}→{network['target'].iloc[0]}); check that the truth, the "
            "predictions and the genes name the same regulators"
        )
    return table


def _metric_rows(method: str, regulator: str, scores: np.ndarray, labels: np.ndarray) -> list:
    n_true, n_candidates = int(labels.sum()), len(labels)
    density = n_true / n_candidates
    auprc = float(average_precision_score(labels, scores))
    auroc = float(roc_auc_score(labels, scores)) if n_true < n_candidates else float("nan")
    precision = float(labels @ _top_k_weights(scores, n_true)) / n_true
    values = {
        "auprc": auprc,
        "auroc": auroc,
        "auprc_ratio": auprc / density,
        "epr": precision / density,
        "n_true": float(n_true),
        "n_candidates": float(n_candidates),
    }
    return [(method, regulator, metric, values[metric]) for metric in METRICS]


def _top_k_weights(scores: np.ndarray, k: int) -> np.ndarray:
    """Each candidate's expected share of the top-``k`` slots under random tie-breaking ``(C,)``:
    1 above the ``k``-th score, ``slots left / block size`` inside the tie block at rank ``k``,
    0 below; the weights sum to ``k``."""
    weights = np.zeros(len(scores))
    if k <= 0:
        return weights
    threshold = np.sort(scores)[::-1][k - 1]
    above = scores > threshold
    tied = scores == threshold
    weights[above] = 1.0
    weights[tied] = (k - int(above.sum())) / int(tied.sum())
    return weights
