"""cell-eval's DE-overlap metric: do a prediction's top DE genes match the real ones?

For each condition, the real cells and the predicted cells are each tested against the same real
control cells with the same test; ``overlap_at_k`` is the fraction of the real top-``k`` DE genes
found among the predicted top-``k``. The definition is cell-eval's (0.8: ``pdex`` DE with the
settings of ``MetricsEvaluator``, ``DEComparison.compute_overlap``):

- test: per gene, two-sided Mann–Whitney U of the condition's cells vs the control cells (normal
  approximation, tie and continuity corrections); Benjamini–Hochberg FDR over the condition's
  genes;
- fold change: ``log2(expm1(mean x_cond) / expm1(mean x_ctrl))``, the ratio of geometric-mean
  pseudobulks of log1p data (``0/0`` counts as 0, a one-sided zero as ``±inf``);
- ranking: the genes with FDR < 0.05, by decreasing ``|log2 fold change|`` (float32, ties in gene
  order);
- ``overlap_at_k = |real[:k'] ∩ pred[:k']| / k'`` with ``k' = min(k, n_real)``, ``n_real`` the
  real significant genes; ``overlap_at_N`` uses ``k' = n_real``; 0 when ``n_real = 0``.

Two implementations of that definition: cell-eval's own functions (``pdex`` for the test,
``cell_eval.metrics.de_overlap_metric`` for the overlap), used when cell-eval is installed
(``pip install perturbflow[celleval]``), and numpy/scipy here otherwise. They agree up to float32
rounding of fold changes that tie (tested). ``pdex`` compiles its numba kernels on the first call
of a process (about 10 s).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Literal

import numpy as np
import pandas as pd
from scipy.special import ndtr
from scipy.stats import false_discovery_control

from perturbflow.data.conditions import CONTROL_NAME
from perturbflow.eval.threads import keep_openmp_threads

__all__ = [
    "DE_OVERLAP_BACKENDS",
    "FDR_THRESHOLD",
    "OVERLAP_KS",
    "DEOverlapError",
    "DETable",
    "de_overlap",
    "de_table",
    "describe_backend",
    "overlap_metric_name",
    "resolve_backend",
]

# 20 matches the other DE metrics (GEARS' top 20), 50 and 100 are cell-eval's, None is cell-eval's
# headline overlap_at_N (every real significant gene).
OVERLAP_KS: tuple[int | None, ...] = (20, 50, 100, None)
FDR_THRESHOLD = 0.05
DE_OVERLAP_BACKENDS = ("auto", "cell-eval", "scipy")
Backend = Literal["auto", "cell-eval", "scipy"]
_LABEL = "condition"


class DEOverlapError(ValueError):
    """The DE overlap cannot be computed as asked (``k``, backend, mismatched tables)."""


@dataclass(frozen=True)
class DETable:
    """One DE test per condition against control: ``(C, G)`` arrays over ``genes``.

    ``backend`` names the implementation that made it (``"cell-eval"`` or ``"scipy"``).
    """

    conditions: tuple[str, ...]
    genes: pd.Index
    log2_fold_change: np.ndarray  # (C, G)
    p_value: np.ndarray  # (C, G)
    fdr: np.ndarray  # (C, G)
    backend: str

    @classmethod
    def concat(cls, tables: Sequence[DETable]) -> DETable:
        """The conditions of ``tables`` (same genes and backend) in one table."""
        first = tables[0]
        return cls(
            conditions=tuple(name for table in tables for name in table.conditions),
            genes=first.genes,
            log2_fold_change=np.vstack([table.log2_fold_change for table in tables]),
            p_value=np.vstack([table.p_value for table in tables]),
            fdr=np.vstack([table.fdr for table in tables]),
            backend=first.backend,
        )

    def select(self, conditions: Sequence[str]) -> DETable:
        """The rows of ``conditions``, in that order."""
        rows = [self.conditions.index(name) for name in conditions]
        return DETable(
            conditions=tuple(conditions),
            genes=self.genes,
            log2_fold_change=self.log2_fold_change[rows],
            p_value=self.p_value[rows],
            fdr=self.fdr[rows],
            backend=self.backend,
        )

    def ranking(self, condition: str, fdr_threshold: float = FDR_THRESHOLD) -> np.ndarray:
        """Indices into ``genes`` of the significant genes, by decreasing ``|log2 FC|``."""
        i = self.conditions.index(condition)
        # float32 as cell-eval stores DE results; the comparison too (polars casts the literal).
        fdr = self.fdr[i].astype(np.float32)  # (G,)
        strength = np.abs(self.log2_fold_change[i].astype(np.float32))  # (G,)
        significant = np.flatnonzero(fdr < np.float32(fdr_threshold))
        order = np.argsort(-strength[significant], kind="stable")  # ties keep gene order
        return significant[order]


def overlap_metric_name(k: int | None) -> str:
    """``overlap_at_20`` for ``k=20``, ``overlap_at_N`` for ``k=None`` (cell-eval's names)."""
    return f"overlap_at_{'N' if _check_k(k) is None else k}"


def resolve_backend(backend: str) -> str:
    """``"cell-eval"`` or ``"scipy"``; ``"auto"`` is cell-eval when it is installed."""
    if backend not in DE_OVERLAP_BACKENDS:
        raise DEOverlapError(
            f"backend must be one of {', '.join(map(repr, DE_OVERLAP_BACKENDS))}, got {backend!r}"
        )
    installed = importlib.util.find_spec("cell_eval") is not None
    if backend == "cell-eval" and not installed:
        raise DEOverlapError(
            "backend 'cell-eval' needs the optional cell-eval package: "
            "pip install perturbflow[celleval] (or use backend='scipy')"
        )
    if backend == "auto":
        return "cell-eval" if installed else "scipy"
    return backend


def describe_backend(backend: str) -> str:
    """What computed the overlap, with versions, for provenance."""
    if backend == "cell-eval":
        return f"cell-eval {_version('cell-eval')} (pdex {_version('pdex')})"
    return "perturbflow numpy/scipy (cell-eval's definition)"


def de_table(
    cells: Mapping[str, np.ndarray],
    control: np.ndarray,
    genes: pd.Index,
    *,
    backend: Backend = "auto",
) -> DETable:
    """cell-eval's DE test of each condition's cells against ``control``.

    Parameters
    ----------
    cells
        ``{condition: (n_c, G)}`` log1p expression, columns in the order of ``genes``; each
        condition needs at least one cell.
    control
        ``(n_ctrl, G)`` control cells, the reference of every condition.
    genes
        The ``G`` gene names.
    backend
        ``"cell-eval"`` (``pdex``), ``"scipy"`` or ``"auto"`` (cell-eval when installed).
    """
    chosen = resolve_backend(backend)
    names = list(cells)
    control = np.asarray(control, dtype=np.float32)  # (n_ctrl, G)
    if control.ndim != 2 or control.shape[1] != len(genes) or len(control) < 1:
        raise DEOverlapError(
            f"control must be (cells, {len(genes)} genes) with at least one cell, "
            f"got shape {control.shape}"
        )
    test = _pdex_test if chosen == "cell-eval" else _scipy_test
    lfc, p, fdr = [], [], []
    for name in names:
        block = np.asarray(cells[name], dtype=np.float32)  # (n_c, G)
        if block.ndim != 2 or block.shape[1] != len(genes) or len(block) < 1:
            raise DEOverlapError(
                f"cells of {name!r} must be (cells, {len(genes)} genes) with at least one cell, "
                f"got shape {block.shape}"
            )
        result = test(block, control, genes)  # three (G,)
        lfc.append(result[0])
        p.append(result[1])
        fdr.append(result[2])
    empty = np.zeros((0, len(genes)))
    return DETable(
        conditions=tuple(names),
        genes=pd.Index(genes),
        log2_fold_change=np.vstack(lfc) if names else empty,
        p_value=np.vstack(p) if names else empty,
        fdr=np.vstack(fdr) if names else empty,
        backend=chosen,
    )


def de_overlap(
    real: DETable,
    pred: DETable,
    k: int | None,
    *,
    backend: Backend = "auto",
    fdr_threshold: float = FDR_THRESHOLD,
) -> np.ndarray:
    """cell-eval's ``overlap_at_k`` per condition ``(C,)``, in the order of ``real.conditions``.

    ``k=None`` is ``overlap_at_N`` (every real significant gene). Both tables must hold the same
    conditions and genes.
    """
    k = _check_k(k)
    if set(real.conditions) != set(pred.conditions) or not real.genes.equals(pred.genes):
        raise DEOverlapError(
            "real and predicted DE tables must hold the same conditions and genes; got "
            f"{len(real.conditions)} vs {len(pred.conditions)} conditions"
        )
    if resolve_backend(backend) == "cell-eval":
        return _celleval_overlap(real, pred, k, fdr_threshold)
    values = []
    for name in real.conditions:
        true_top = real.ranking(name, fdr_threshold)  # (n_real,)
        pred_top = pred.ranking(name, fdr_threshold)  # (n_pred,)
        k_eff = len(true_top) if k is None else min(k, len(true_top))
        if k_eff == 0:
            values.append(0.0)  # no real DE gene: cell-eval scores 0
            continue
        shared = np.intersect1d(true_top[:k_eff], pred_top[:k_eff]).size
        values.append(shared / k_eff)
    return np.asarray(values, dtype=np.float64)


# -- implementations -----------------------------------------------------------------------------


def _check_k(k: int | None) -> int | None:
    if k is None:
        return None
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise DEOverlapError(
            f"k (the N of overlap_at_N) must be a positive integer or None (all real DE genes), "
            f"got {k!r}"
        )
    return int(k)


def _scipy_test(
    cells: np.ndarray, control: np.ndarray, genes: pd.Index
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(log2 FC, p, FDR)`` ``(G,)`` each, as ``pdex(mode="ref", is_log1p=True, epsilon=0)``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        # Geometric-mean pseudobulks back in count space, float32 like pdex on float32 input.
        target = np.expm1(cells.mean(axis=0))  # (G,)
        reference = np.expm1(control.mean(axis=0))  # (G,)
        lfc = np.log2(target.astype(np.float64) / reference.astype(np.float64))  # (G,)
    lfc[np.isnan(lfc)] = 0.0
    p = _mann_whitney_p(cells, control)  # (G,) float32 values rank as the float64 ones
    return lfc, p, false_discovery_control(p)


def _mann_whitney_p(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Two-sided Mann–Whitney U p-values per column of ``x`` ``(n1, G)`` vs ``y`` ``(n2, G)``:
    normal approximation with tie and continuity corrections (scipy's ``asymptotic``)."""
    n1, n2 = len(x), len(y)
    n = n1 + n2
    rank_sum, tie_term = _rank_sums(np.concatenate([x, y]).T, n1)  # (G,), (G,)
    u1 = rank_sum - n1 * (n1 + 1) / 2.0
    u = np.maximum(u1, n1 * n2 - u1)  # (G,)
    variance = n1 * n2 / 12.0 * ((n + 1) - tie_term / (n * (n - 1.0)))  # (G,)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (u - n1 * n2 / 2.0 - 0.5) / np.sqrt(variance)
        p = np.clip(2.0 * ndtr(-z), 0.0, 1.0)
    return np.where(variance > 0, p, 1.0)  # all values equal: no evidence of a difference


def _rank_sums(values: np.ndarray, n_first: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``values`` ``(G, n)``: the sum of the average ranks of its first ``n_first``
    entries, and ``sum(t^3 - t)`` over its groups of tied values; both ``(G,)``.

    One sort of contiguous rows; runs of equal values never cross rows because every row starts
    a new run.
    """
    n_genes, n = values.shape
    order = np.argsort(values, axis=1, kind="stable")  # (G, n)
    ordered = np.take_along_axis(values, order, axis=1)  # (G, n)
    starts = np.ones((n_genes, n), dtype=bool)  # (G, n): a new value starts here
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    first = np.flatnonzero(starts)  # (R,) flat start of each run
    length = np.diff(np.append(first, n_genes * n)).astype(np.float64)  # (R,)
    average_rank = first % n + (length + 1.0) / 2.0  # (R,) 1-based
    run = np.cumsum(starts.ravel()) - 1  # (G * n,) run of each sorted entry
    row = np.repeat(np.arange(n_genes), n)  # (G * n,)
    mine = order.ravel() < n_first  # (G * n,)
    rank_sum = np.bincount(row[mine], weights=average_rank[run[mine]], minlength=n_genes)
    tie_term = np.bincount(first // n, weights=length**3 - length, minlength=n_genes)
    return rank_sum, tie_term


def _pdex_test(
    cells: np.ndarray, control: np.ndarray, genes: pd.Index
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(log2 FC, p, FDR)`` from ``pdex`` with the settings cell-eval's evaluator passes."""
    import anndata as ad
    from pdex import pdex

    labels = np.repeat(["condition", CONTROL_NAME], [len(cells), len(control)])
    adata = ad.AnnData(
        X=np.vstack([cells, control]),  # (n_c + n_ctrl, G) float32
        obs=pd.DataFrame(
            {_LABEL: pd.Categorical(labels)}, index=pd.RangeIndex(len(labels)).astype(str)
        ),
        var=pd.DataFrame(index=pd.Index(genes).astype(str)),
    )
    # cell-eval's MetricsEvaluator: mode "ref", log1p input, epsilon 0 (its pdex<0.2.5 behaviour);
    # one numba thread, as the rest of the evaluation.
    with _quiet(), keep_openmp_threads():
        frame = pdex(
            adata,
            groupby=_LABEL,
            mode="ref",
            reference=CONTROL_NAME,
            threads=1,
            is_log1p=True,
            epsilon=0.0,
        )
    return (
        frame["log2_fold_change"].to_numpy().astype(np.float64),
        frame["p_value"].to_numpy().astype(np.float64),
        frame["fdr"].to_numpy().astype(np.float64),
    )


def _celleval_overlap(
    real: DETable, pred: DETable, k: int | None, fdr_threshold: float
) -> np.ndarray:
    """cell-eval's own ``de_overlap_metric`` on the two tables."""
    import polars as pl
    from cell_eval import initialize_de_comparison
    from cell_eval.metrics import de_overlap_metric

    with _quiet():
        comparison = initialize_de_comparison(real=_polars(real, pl), pred=_polars(pred, pl))
        scores = de_overlap_metric(comparison, k=k, metric="overlap", fdr_threshold=fdr_threshold)
    return np.array([float(scores[name]) for name in real.conditions], dtype=np.float64)


def _polars(table: DETable, pl):
    """The long DE frame cell-eval reads (``target``, ``feature``, fold change, p, FDR)."""
    n_conditions, n_genes = table.log2_fold_change.shape
    return pl.DataFrame(
        {
            "target": np.repeat(np.asarray(table.conditions, dtype=str), n_genes),
            "feature": np.tile(np.asarray(table.genes, dtype=str), n_conditions),
            "log2_fold_change": table.log2_fold_change.ravel(),
            "p_value": table.p_value.ravel(),
            "fdr": table.fdr.ravel(),
        }
    )


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Without pdex's progress bar (one per call, on stderr) and cell-eval's warning about
    infinite fold changes (one per table and call; such genes simply rank first)."""
    celleval_log = logging.getLogger("cell_eval")
    level = celleval_log.level
    celleval_log.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        celleval_log.setLevel(level)


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"
