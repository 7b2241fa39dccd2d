"""Cross-check perturbflow's metrics against the ``cell-eval`` package (optional extra).

:func:`to_celleval_pair` exports real and predicted cells as the AnnData pair cell-eval expects;
:func:`celleval_crosscheck` runs cell-eval's metrics that overlap ours on that pair and our
functions on the same pseudobulks, and reports both, one row per condition × metric.

cell-eval is imported lazily: ``pip install perturbflow[celleval]``. Only its array metrics are
called (``cell_eval.metrics.pearson_delta``, ``mse``, ``mae``, ``discrimination_score`` with
``metric="l1"``), never ``MetricsEvaluator``, whose constructor runs a differential-expression
test (pdex) that none of these metrics needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from types import ModuleType
from typing import TYPE_CHECKING

import anndata as ad
import numpy as np
import pandas as pd

from perturbflow.data.conditions import CONTROL_NAME
from perturbflow.data.io import CONDITION_COLUMN
from perturbflow.eval.evaluate import (
    PredictionValidationError,
    _align_genes,
    _model_name,
    _prediction_labels,
    _resolve_conditions,
    _rows,
)
from perturbflow.eval.metrics import discrimination_l1, mse_de20, pearson_delta

if TYPE_CHECKING:
    from perturbflow.data.io import PerturbationDataset
    from perturbflow.data.splits import Split

__all__ = [
    "CROSSCHECK_COLUMNS",
    "CellEvalNotInstalledError",
    "celleval_crosscheck",
    "to_celleval_pair",
]

CROSSCHECK_COLUMNS = (
    "condition",
    "metric",
    "perturbflow",
    "cell_eval",
    "abs_diff",
    "note",
    "model",
    "seed",
)

# Why each pair of numbers is comparable; written in the ``note`` column.
_NOTES = {
    "pearson_delta": (
        "same definition: Pearson of pseudobulk change from the real control mean, all genes "
        "(the pair's predicted controls are the real control cells)"
    ),
    "mse": (
        "same definition: MSE of pseudobulk means over all genes (perturbflow mse_de20 given "
        "every gene)"
    ),
    "mae": (
        "same definition: MAE of pseudobulk means over all genes (no registered perturbflow "
        "metric; computed from perturbflow's pseudobulks)"
    ),
    "discrimination_score_l1": (
        "aligned: perturbflow discrimination_l1 s = 1 - rank/(C-1) rescaled to cell-eval's "
        "1 - rank/C as 1 - (1 - s)(C-1)/C; target exclusion as cell-eval (only the gene named "
        "exactly like the condition, so none for doubles; perturbflow.evaluate drops every "
        "perturbed gene); ties: cell-eval breaks them by argsort order, perturbflow counts them "
        "against the prediction"
    ),
}


class CellEvalNotInstalledError(ImportError):
    """The optional ``cell-eval`` package is missing."""


def _import_cell_eval() -> tuple[ModuleType, type]:
    """``(cell_eval.metrics, PerturbationAnndataPair)``, imported on first use."""
    try:
        from cell_eval import PerturbationAnndataPair
        from cell_eval import metrics as ce_metrics
    except ImportError as error:
        raise CellEvalNotInstalledError(
            "the cell-eval cross-check needs the optional cell-eval package: "
            "pip install perturbflow[celleval]"
        ) from error
    return ce_metrics, PerturbationAnndataPair


def to_celleval_pair(
    predictions: ad.AnnData, dataset: PerturbationDataset, conditions: Sequence[str]
) -> tuple[ad.AnnData, ad.AnnData]:
    """The ``(real, pred)`` AnnData pair cell-eval expects for ``conditions``.

    Both hold the dataset's genes in the dataset's order (``X`` dense float32, log-normalised) and
    ``obs[CONDITION_COLUMN]`` with canonical condition names; the control label is
    :data:`~perturbflow.data.conditions.CONTROL_NAME` (``"ctrl"``). cell-eval requires the same
    set of labels, control included, on both sides and takes each side's own control mean as the
    reference of its deltas; models predict no control cells, so the real control cells are put
    in both, which makes cell-eval's reference the real control mean, as in
    :func:`perturbflow.eval.evaluate`.

    ``real``: the dataset's cells of ``conditions`` then its control cells. ``pred``: the predicted
    cells of ``conditions`` (any label spelling that parses, genes aligned by name) then the same
    control cells. Pass it to cell-eval as ``pert_col=CONDITION_COLUMN, control_pert="ctrl"``.
    """
    names = _resolve_conditions(conditions, None, dataset)
    labels = _prediction_labels(predictions)
    gene_columns = _align_genes(predictions, dataset.genes)
    missing = [name for name in names if not (labels == name).any()]
    if missing:
        raise PredictionValidationError(
            f"predictions have no cells for {len(missing)} condition(s): {missing[:10]}"
        )
    control = dataset.control_expression().astype(np.float32, copy=False)  # (n_ctrl, G)
    real_blocks = [dataset.expression(name) for name in names]  # [(n_true_c, G)]
    pred_blocks = [_rows(predictions.X, labels == name, gene_columns) for name in names]
    real = _labelled(real_blocks, control, names, dataset.genes, "real")
    pred = _labelled(pred_blocks, control, names, dataset.genes, "pred")
    return real, pred


def _labelled(
    blocks: list[np.ndarray],
    control: np.ndarray,
    names: list[str],
    genes: pd.Index,
    prefix: str,
) -> ad.AnnData:
    matrix = np.vstack([*blocks, control]).astype(np.float32, copy=False)  # (n_cells, G)
    labels = np.repeat([*names, CONTROL_NAME], [len(b) for b in (*blocks, control)])
    obs = pd.DataFrame(
        {CONDITION_COLUMN: pd.Categorical(labels)},
        index=pd.Index([f"{prefix}{i}" for i in range(len(labels))]),
    )
    return ad.AnnData(X=matrix, obs=obs, var=pd.DataFrame(index=genes.copy()))


def celleval_crosscheck(
    predictions: ad.AnnData,
    dataset: PerturbationDataset,
    split: Split | None,
    *,
    model: str | None = None,
    seed: int = 0,
    conditions: Sequence[str] | None = None,
) -> pd.DataFrame:
    """cell-eval's and perturbflow's values of the metrics both define, on identical inputs.

    The pair from :func:`to_celleval_pair` goes to cell-eval; the same cells, as pseudobulk means
    (float64 accumulation) with the real control mean as reference, go to our functions.
    Definitions are aligned where they differ (the ``note`` column says how, per metric):

    - ``pearson_delta``, ``mse``, ``mae``: same definitions (MSE via ``mse_de20`` on all genes;
      MAE has no registered perturbflow metric and is computed from our pseudobulks).
    - ``discrimination_score_l1``: cell-eval scores ``1 - rank/C`` with ``C`` the conditions
      scored, ours ``1 - rank/(C-1)``; our score ``s`` is reported rescaled,
      ``1 - (1 - s)(C-1)/C``. cell-eval excludes only the gene whose name equals the condition's
      (a single's target, nothing for ``A+B``); our side is given that same mask here, whereas
      :func:`perturbflow.eval.evaluate` excludes every perturbed gene. Exact ties of distances
      may still rank differently (argsort order vs. ties against the prediction).

    Parameters
    ----------
    predictions, dataset, split
        As in :func:`perturbflow.eval.evaluate`; conditions default to ``split.test``.
    model
        Written in the ``model`` column; default ``predictions.uns["perturbflow"]["model"]``.
    seed
        Written in the ``seed`` column (nothing here is random).
    conditions
        Canonical names to score instead of ``split.test``; control cannot be scored.

    Returns
    -------
    Long table with columns :data:`CROSSCHECK_COLUMNS`, one row per condition × metric,
    ``abs_diff = |perturbflow - cell_eval|``; ``attrs["perturbflow"]`` records the cell-eval
    version.

    Raises
    ------
    CellEvalNotInstalledError
        cell-eval is not installed (``pip install perturbflow[celleval]``).
    """
    ce_metrics, pair_type = _import_cell_eval()
    names = _resolve_conditions(conditions, split, dataset)
    real, pred = to_celleval_pair(predictions, dataset, names)
    pair = pair_type(real=real, pred=pred, pert_col=CONDITION_COLUMN, control_pert=CONTROL_NAME)

    theirs = {
        "pearson_delta": ce_metrics.pearson_delta(pair),
        "mse": ce_metrics.mse(pair),
        "mae": ce_metrics.mae(pair),
        "discrimination_score_l1": ce_metrics.discrimination_score(pair, metric="l1"),
    }
    ours = _our_metrics(real, pred, names)

    rows = [
        (name, metric, ours[metric][i], float(theirs[metric][name]))
        for metric in theirs
        for i, name in enumerate(names)
    ]
    table = pd.DataFrame(rows, columns=["condition", "metric", "perturbflow", "cell_eval"])
    table["abs_diff"] = (table["perturbflow"] - table["cell_eval"]).abs()
    table["note"] = table["metric"].map(_NOTES)
    table["model"] = model or _model_name(predictions)
    table["seed"] = int(seed)
    table = table.loc[:, list(CROSSCHECK_COLUMNS)]
    table.attrs["perturbflow"] = {
        "function": "celleval_crosscheck",
        "cell_eval_version": _cell_eval_version(),
        "control_reference": "real control cells (in both sides of the pair)",
        "discrimination_scale": "1 - rank/C (cell-eval)",
        "target_exclusion": "gene named like the condition (cell-eval)",
    }
    return table


def _our_metrics(real: ad.AnnData, pred: ad.AnnData, names: list[str]) -> dict[str, np.ndarray]:
    """Our values ``{metric: (C,)}`` from the pair's pseudobulks, definitions aligned."""
    true_means = _means(real, names)  # (C, G)
    pred_means = _means(pred, names)  # (C, G)
    ctrl_mean = _means(real, [CONTROL_NAME])[0]  # (G,)
    all_genes = np.arange(real.n_vars)
    n_conditions = len(names)
    # cell-eval's target rule: the gene whose symbol equals the condition name.
    exclude = np.vstack([real.var_names == name for name in names])  # (C, G)
    score = discrimination_l1(pred_means, true_means, exclude)  # (C,) 1 - rank/(C-1)
    pairs = list(zip(pred_means, true_means, strict=True))
    return {
        "pearson_delta": np.array([pearson_delta(p, t, ctrl_mean) for p, t in pairs]),
        "mse": np.array([mse_de20(p, t, all_genes) for p, t in pairs]),
        "mae": np.abs(pred_means - true_means).mean(axis=1),
        "discrimination_score_l1": 1.0 - (1.0 - score) * (n_conditions - 1) / n_conditions,
    }


def _means(adata: ad.AnnData, names: list[str]) -> np.ndarray:
    labels = adata.obs[CONDITION_COLUMN].astype(str).to_numpy()
    matrix = np.asarray(adata.X)
    return np.vstack([matrix[labels == name].mean(axis=0, dtype=np.float64) for name in names])


def _cell_eval_version() -> str:
    try:
        return version("cell-eval")
    except PackageNotFoundError:
        return "unknown"
