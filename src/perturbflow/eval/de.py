"""Differentially expressed genes per condition, GEARS definition.

Each condition is compared with the reference (control) by scanpy's ``rank_genes_groups`` with the
t-test on log-normalised expression, genes ranked by the absolute t-score; the top ``n_top`` (20 in
GEARS and docs/method.md §5) are the condition's DE genes. Computed on real cells only.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from perturbflow.data.conditions import CONTROL_NAME
from perturbflow.data.io import CONDITION_COLUMN
from perturbflow.eval.threads import keep_openmp_threads

if TYPE_CHECKING:
    from perturbflow.data.io import PerturbationDataset

__all__ = ["DEError", "de_genes"]


class DEError(ValueError):
    """DE genes cannot be computed for the requested conditions."""


def de_genes(
    dataset: PerturbationDataset,
    conditions: Sequence[str],
    *,
    n_top: int = 20,
    reference: str = CONTROL_NAME,
) -> dict[str, np.ndarray]:
    """Top ``n_top`` DE genes of each condition against ``reference``.

    Parameters
    ----------
    dataset
        The real data; never modified (scanpy runs on a copy of the needed cells only).
    conditions
        Canonical condition names.
    n_top
        Genes per condition; all genes if the dataset has fewer.
    reference
        Condition the others are compared with.

    Returns
    -------
    ``{condition: (n_top,) int array}`` of indices into ``dataset.genes``, by decreasing absolute
    t-score; exact ties are broken by gene order in the dataset, so the result is deterministic.
    """
    import scanpy as sc  # heavy import, only needed here

    names = list(dict.fromkeys(conditions))
    if n_top < 1:
        raise DEError(f"n_top must be at least 1, got {n_top}")
    if reference in names:
        raise DEError(
            f"condition {reference!r} is the reference; it has no DE genes against itself"
        )
    if not names:
        return {}
    known = set(dataset.conditions)
    unknown = [name for name in [*names, reference] if name not in known]
    if unknown:
        raise DEError(f"condition(s) {unknown} not in the dataset; cannot compute DE genes")
    counts = dataset.condition_labels.value_counts()
    too_small = {name: int(counts.get(name, 0)) for name in [*names, reference]}
    too_small = {name: n for name, n in too_small.items() if n < 2}
    if too_small:
        raise DEError(
            "a t-test needs at least 2 cells per group; too few cells in "
            + ", ".join(f"{name!r} ({n})" for name, n in too_small.items())
        )

    # One call covers every condition: with a reference, each group's t-test uses only that group
    # and the reference, exactly as running the conditions one by one.
    adata = dataset.subset([*names, reference]).adata  # a copy
    adata.obs[CONDITION_COLUMN] = pd.Categorical(adata.obs[CONDITION_COLUMN].astype(str))
    with warnings.catch_warnings(), keep_openmp_threads():
        # scanpy fills its result table column by column; pandas' fragmentation warning is noise.
        warnings.simplefilter("ignore", pd.errors.PerformanceWarning)
        sc.tl.rank_genes_groups(
            adata,
            groupby=CONDITION_COLUMN,
            groups=names,
            reference=reference,
            method="t-test",
            n_genes=adata.n_vars,
            rankby_abs=True,
            use_raw=False,
        )
    result = adata.uns["rank_genes_groups"]
    n_keep = min(n_top, adata.n_vars)
    genes = dataset.genes
    top: dict[str, np.ndarray] = {}
    for name in names:
        gene_idx = genes.get_indexer(np.asarray(result["names"][name], dtype=str))  # (G,)
        scores = np.zeros(len(genes))
        scores[gene_idx] = np.nan_to_num(np.asarray(result["scores"][name], dtype=np.float64))
        order = np.argsort(-np.abs(scores), kind="stable")  # (G,)
        top[name] = order[:n_keep].astype(np.int64)
    return top
