"""Edges from expression alone: tree ensembles (GRNBoost2-style) and correlation (the floor).

perturbflow implements GRNBoost2's recipe on scikit-learn itself rather than calling arboreto,
because arboreto 0.1.6 (its latest release) fails with current dask/distributed: its default
local cluster passes an argument distributed no longer accepts, and with an explicit client its
``from_delayed`` call on an empty list raises "Must supply at least one delayed object".

:func:`tree_edges` fits, per target gene, a stochastic gradient-boosting ensemble over the
candidate regulators and scores each regulator by its importance; :func:`correlation_edges`
scores by ``|Pearson r|``, the baseline any method must beat.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from joblib import Parallel, delayed
from sklearn.ensemble import GradientBoostingRegressor

from perturbflow.grn.network import GRNInputError, _gene_list, require_genes

logger = logging.getLogger(__name__)

__all__ = ["correlation_edges", "tree_edges"]

# GRNBoost2's stochastic gradient boosting (Moerman et al., Bioinformatics 2019).
_LEARNING_RATE = 0.01
_SUBSAMPLE = 0.9
_MAX_DEPTH = 3


def tree_edges(
    expression: np.ndarray | sp.spmatrix,
    genes: Sequence[str],
    regulators: Sequence[str],
    *,
    targets: Sequence[str] | None = None,
    n_estimators: int = 5000,
    max_features: float = 0.1,
    early_stop_window: int = 25,
    seed: int = 0,
    n_jobs: int = 1,
) -> pd.DataFrame:
    """GRNBoost2-style edges: per target, boosted trees over the regulators; importance = score.

    ``expression`` is ``(cells, genes)`` (dense or sparse, log-normalised), its columns named by
    ``genes``; ``regulators`` (all among ``genes``) are the candidate sources and ``targets``
    (default: every gene) the genes to explain. Each target is fitted on every regulator but
    itself with :class:`~sklearn.ensemble.GradientBoostingRegressor` (learning rate 0.01, depth
    3, 90 % of cells per tree, a ``max_features`` fraction of regulators per split, at most
    ``n_estimators`` trees), stopped early once the out-of-bag improvement averaged over the last
    ``early_stop_window`` trees is no longer positive. ``score`` = importance × trees kept.

    Why boosting and not extra trees / random forests (GENIE3): a fully grown forest explains
    all of each target's training variance whatever the signal, so its importances put a target
    that no regulator explains on the same scale as one that a regulator drives. Boosting with
    out-of-bag early stopping keeps few trees where there is nothing to learn, so scores compare
    across targets; its shallow trees are also fast.

    ``sign`` is the sign of the Pearson correlation (trees carry no direction; 0 when
    undefined). Pairs scoring 0 are left out (metrics score missing pairs 0). Each target is
    fitted with its own seed, derived from ``seed`` and the target's name, so the result does not
    depend on ``n_jobs`` or on which other targets are fitted. ``n_jobs > 1`` fits targets in
    parallel threads (scikit-learn builds trees without the GIL); a
    ``joblib.parallel_config(backend=...)`` around the call picks another backend.
    Returns an edges table (``source, target, score, sign``) sorted by score (descending).
    """
    for name, value, lowest in (
        ("n_estimators", n_estimators, 1),
        ("early_stop_window", early_stop_window, 1),
        ("seed", seed, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < lowest:
            raise GRNInputError(f"{name} must be an integer ≥ {lowest}, got {value!r}")
    if not 0 < float(max_features) <= 1:
        raise GRNInputError(f"max_features must be a fraction in (0, 1], got {max_features!r}")
    if n_jobs == 0 or isinstance(n_jobs, bool) or not isinstance(n_jobs, int | np.integer):
        raise GRNInputError(f"n_jobs must be a non-zero integer (-1: all cores), got {n_jobs!r}")
    matrix, gene_list, regulator_list, target_list = _inputs(expression, genes, regulators, targets)
    position = {gene: i for i, gene in enumerate(gene_list)}
    regulator_columns = np.array([position[gene] for gene in regulator_list])  # (R,)
    correlation = _correlation(matrix, regulator_columns)  # (R, G)

    def fit(target: str) -> np.ndarray:
        """Scores ``(R,)`` of every regulator for ``target`` (0 for the target itself)."""
        column = position[target]
        response = matrix[:, column]  # (N,)
        scores = np.zeros(len(regulator_list))
        features = np.flatnonzero(regulator_columns != column)  # (R',)
        if features.size == 0 or np.ptp(response) == 0:
            return scores
        stream = np.random.SeedSequence([seed, zlib.crc32(target.encode())])
        booster = GradientBoostingRegressor(
            learning_rate=_LEARNING_RATE,
            n_estimators=n_estimators,
            max_depth=_MAX_DEPTH,
            subsample=_SUBSAMPLE,
            max_features=float(max_features),
            random_state=int(stream.generate_state(1)[0]),
        )
        booster.fit(
            matrix[:, regulator_columns[features]],
            response,
            monitor=_EarlyStop(early_stop_window),
        )
        scores[features] = booster.feature_importances_ * booster.n_estimators_
        return scores

    columns = Parallel(n_jobs=n_jobs, prefer="threads")(
        delayed(fit)(target) for target in target_list
    )
    scores = np.column_stack(columns) if columns else np.zeros((len(regulator_list), 0))  # (R, T)
    target_columns = np.array([position[gene] for gene in target_list], dtype=int)  # (T,)
    edges = _long(scores, correlation[:, target_columns], regulator_list, target_list)
    edges.attrs = {
        "perturbflow": {
            "method": "tree",
            "model": "GradientBoostingRegressor",
            "n_estimators": int(n_estimators),
            "max_features": float(max_features),
            "learning_rate": _LEARNING_RATE,
            "subsample": _SUBSAMPLE,
            "max_depth": _MAX_DEPTH,
            "early_stop_window": int(early_stop_window),
            "seed": int(seed),
            "score": "importance × trees kept",
        }
    }
    logger.info(
        "tree edges: %d regulators × %d targets on %d cells, %d non-zero edges",
        len(regulator_list),
        len(target_list),
        matrix.shape[0],
        len(edges),
    )
    return edges


def correlation_edges(
    expression: np.ndarray | sp.spmatrix,
    genes: Sequence[str],
    regulators: Sequence[str],
    *,
    targets: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Edges scored by ``|Pearson r|`` between regulator and target over cells, sign from ``r``.

    Same inputs as :func:`tree_edges`; a gene constant over the cells correlates with nothing
    (r = 0), and pairs scoring 0 (and regulator = target) are left out. Returns an edges table
    (``source, target, score, sign``) sorted by score (descending).
    """
    matrix, gene_list, regulator_list, target_list = _inputs(expression, genes, regulators, targets)
    position = {gene: i for i, gene in enumerate(gene_list)}
    regulator_columns = np.array([position[gene] for gene in regulator_list])  # (R,)
    target_columns = np.array([position[gene] for gene in target_list])  # (T,)
    correlation = _correlation(matrix, regulator_columns)[:, target_columns]  # (R, T)
    edges = _long(np.abs(correlation), correlation, regulator_list, target_list)
    edges.attrs = {"perturbflow": {"method": "correlation", "score": "|Pearson r|"}}
    return edges


class _EarlyStop:
    """GRNBoost2's stopping rule, as a scikit-learn ``monitor``: stop once the out-of-bag
    improvement averaged over the last ``window`` trees is ≤ 0."""

    def __init__(self, window: int) -> None:
        self.window = window

    def __call__(self, iteration: int, booster: GradientBoostingRegressor, _locals) -> bool:
        if iteration < self.window:
            return False
        recent = booster.oob_improvement_[iteration - self.window + 1 : iteration + 1]
        return bool(np.mean(recent) <= 0)


def _inputs(
    expression, genes: Sequence[str], regulators: Sequence[str], targets: Sequence[str] | None
) -> tuple[np.ndarray, list[str], list[str], list[str]]:
    """Dense float64 ``(cells, genes)`` expression and the checked gene, regulator, target lists."""
    gene_list = _gene_list(genes, "genes")
    if sp.issparse(expression):
        expression = expression.toarray()
    matrix = np.asarray(expression, dtype=np.float64)  # (N, G)
    if matrix.ndim != 2 or matrix.shape[1] != len(gene_list):
        raise GRNInputError(
            f"expression must be (cells, genes) with one column per gene ({len(gene_list)}), "
            f"got shape {matrix.shape}"
        )
    if matrix.shape[0] < 3:
        raise GRNInputError(f"expression has {matrix.shape[0]} cells; give at least 3")
    if not np.isfinite(matrix).all():
        raise GRNInputError(
            f"expression has {int((~np.isfinite(matrix)).sum())} NaN or infinite value(s); "
            "remove or impute them"
        )
    regulator_list = require_genes(regulators, gene_list, what="regulator", where="genes")
    target_list = (
        gene_list
        if targets is None
        else require_genes(targets, gene_list, what="target", where="genes")
    )
    return matrix, gene_list, regulator_list, target_list


def _correlation(matrix: np.ndarray, regulator_columns: np.ndarray) -> np.ndarray:
    """Pearson r ``(R, G)`` of each regulator column with every gene; 0 where a gene is constant."""
    centred = matrix - matrix.mean(axis=0)  # (N, G)
    norms = np.linalg.norm(centred, axis=0)  # (G,)
    unit = np.divide(centred, norms, out=np.zeros_like(centred), where=norms > 0)  # (N, G)
    return np.clip(unit[:, regulator_columns].T @ unit, -1.0, 1.0)  # (R, G)


def _long(
    scores: np.ndarray, correlation: np.ndarray, regulators: list[str], targets: list[str]
) -> pd.DataFrame:
    """Non-zero ``(R, T)`` scores as an edges table, regulator = target left out."""
    source = np.repeat(np.asarray(regulators, dtype=object), len(targets))  # (R*T,)
    target = np.tile(np.asarray(targets, dtype=object), len(regulators))  # (R*T,)
    flat = scores.ravel()
    keep = (flat > 0) & (source != target)
    edges = pd.DataFrame(
        {
            "source": source[keep].astype(str),
            "target": target[keep].astype(str),
            "score": flat[keep],
            "sign": np.sign(correlation.ravel()[keep]).astype(np.int8),
        }
    )
    return edges.sort_values(
        ["score", "source", "target"], ascending=[False, True, True], ignore_index=True
    )
