"""Score predicted cells against real cells, per condition, in long format.

:func:`evaluate` validates a model's predictions once (condition column, genes, conditions), turns
both sides into per-condition pseudobulks and cell samples, and runs every registered metric
(:data:`perturbflow.eval.metrics.METRICS`). :func:`noise_ceiling` scores one random half of the real
cells against the other half with the same code and rescales the scores to what a perfect model
would reach against all the real cells, so a model's numbers can be read as a fraction of what the
data allow. Both score the Systema metrics against the mean of the split's training perturbations
(:func:`training_reference`). :func:`condition_sizes` records the cell and gene counts a ceiling
rests on. :func:`summarize` aggregates either table.

Result tables have exactly the columns :data:`RESULT_COLUMNS`, one row per condition × metric, and
record how they were made in ``DataFrame.attrs["perturbflow"]``.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from perturbflow.data.conditions import CONTROL_NAME, ConditionError, canonical, parse_condition
from perturbflow.data.io import CONDITION_COLUMN
from perturbflow.eval.de import de_genes
from perturbflow.eval.metrics import METRICS, MetricSpec, get_metric
from perturbflow.eval.overlap import DETable, de_table, describe_backend, resolve_backend

if TYPE_CHECKING:
    from perturbflow.data.io import PerturbationDataset
    from perturbflow.data.splits import Split

__all__ = [
    "CEILING_CORRECTIONS",
    "RESULT_COLUMNS",
    "SIZE_COLUMNS",
    "SUMMARY_COLUMNS",
    "EvaluationError",
    "PredictionValidationError",
    "condition_sizes",
    "evaluate",
    "noise_ceiling",
    "real_de_table",
    "summarize",
    "training_reference",
]

logger = logging.getLogger(__name__)

RESULT_COLUMNS = ("condition", "subgroup", "metric", "value", "model", "seed")
SUMMARY_COLUMNS = (
    "subgroup",
    "model",
    "metric",
    "mean",
    "sd",
    "n_conditions",
    "n_seeds",
    "n_missing",
)
SIZE_COLUMNS = ("condition", "n_cells", "n_genes")
NOISE_CEILING_MODEL = "noise_ceiling"
CEILING_CORRECTIONS = ("perfect_model", "none")
_UNKNOWN_MODEL = "unknown"
_PREVIEW = 10


class EvaluationError(ValueError):
    """The requested evaluation is not possible (conditions, DE genes, parameters)."""


class PredictionValidationError(EvaluationError):
    """Predictions do not match the dataset or lack what evaluation needs."""


def evaluate(
    predictions: ad.AnnData,
    dataset: PerturbationDataset,
    split: Split | None,
    *,
    model: str | None = None,
    seed: int = 0,
    sampling_seed: int | None = None,
    de: Mapping[str, np.ndarray] | None = None,
    conditions: Sequence[str] | None = None,
    max_cells: int = 500,
    energy_pcs: int | None = 50,
    metrics: Sequence[str] | None = None,
    exclude_target_genes: bool = True,
    systema_reference: np.ndarray | None = None,
    de_overlap: bool = False,
    real_de: DETable | None = None,
    de_backend: str = "auto",
) -> pd.DataFrame:
    """Score predicted cells against the real cells of each condition.

    Parameters
    ----------
    predictions
        Predicted log-normalised cells: ``obs[CONDITION_COLUMN]`` names each cell's condition
        (any spelling that parses, e.g. ``B+A``), ``var_names`` are the dataset's genes in any order
        (aligned by name), ``X`` dense or sparse. ``uns["perturbflow"]["model"]`` names the model
        if ``model`` is not given.
    dataset
        The real data.
    split
        Gives the default conditions (``split.test``), each condition's subgroup
        (``split.subgroups``; otherwise ``train``/``val``/``test`` by membership, else
        ``"unassigned"``) and the training perturbations whose mean is the Systema reference
        (:func:`training_reference`). May be ``None`` when ``conditions`` is given; the Systema
        metrics are then ``nan`` unless ``systema_reference`` is given.
    model
        Name written in the ``model`` column.
    seed
        Written in the ``seed`` column (the replicate), and seeds the cell subsampling for the
        energy distance unless ``sampling_seed`` is given. Each condition draws from its own
        stream ``default_rng([sampling seed, crc32(condition)])``, so a condition's score does not
        depend on which other conditions are evaluated.
    sampling_seed
        Seed of the cell subsampling when it should differ from ``seed``.
    de
        ``{condition: gene indices into dataset.genes}``; computed by :func:`de_genes` (top 20,
        t-test against control) when ``None``. Pass it to reuse DE genes across models.
    conditions
        Canonical names to score; default ``split.test``. Control cannot be scored.
    max_cells
        At most this many cells per side enter the energy distance (quadratic cost). Means use all
        cells.
    energy_pcs
        ``energy_distance`` is computed on the top ``energy_pcs`` principal components of the
        real *control* cells (fitted once, fixed ``random_state``): a space that holds no test
        cell, is the same for every model and seed, and is not dominated by per-gene noise of
        thousands of lowly expressed genes. ``None`` uses all genes. ``energy_distance_genes``
        is always computed on all genes, from the same cell samples.
    metrics
        Registered metric names to compute; default those computed by default
        (:data:`perturbflow.eval.metrics.DEFAULT_METRIC_NAMES`: all but the DE overlap).
    exclude_target_genes
        Drop each condition's perturbed genes from its discrimination distances (as cell-eval).
    systema_reference
        ``(G,)`` over ``dataset.genes``: the reference of ``pearson_systema*`` when the dataset
        does not hold the training perturbations (e.g. a cross-cell-line evaluation set holds only
        the target line's control and test cells); default :func:`training_reference`.
    de_overlap
        Also compute cell-eval's ``overlap_at_*`` (:mod:`perturbflow.eval.overlap`): a rank test
        per gene of every condition's predicted cells (all of them) and real cells against the
        real control cells.
    real_de
        The real cells' DE tests (:func:`real_de_table`) covering the evaluated conditions, to
        reuse across models; computed when ``None``.
    de_backend
        ``"auto"`` (cell-eval's own functions when installed, else numpy/scipy), ``"cell-eval"``
        or ``"scipy"``; the predictions' test uses ``real_de``'s backend when it is given.

    Returns
    -------
    Long table with columns :data:`RESULT_COLUMNS`, one row per condition × metric, conditions in
    the given order and metrics in registry order. ``discrimination_l1`` ranks each condition
    among the evaluated conditions only.
    """
    names = _resolve_conditions(conditions, split, dataset)
    specs = _resolve_metrics(metrics, de_overlap)
    labels = _prediction_labels(predictions)
    gene_columns = _align_genes(predictions, dataset.genes)
    missing = [name for name in names if not (labels == name).any()]
    if missing:
        raise PredictionValidationError(
            f"predictions have no cells for {len(missing)} evaluated condition(s): "
            f"{_preview(missing)}; predicted conditions: {_preview(sorted(set(labels)))}"
        )
    model_name = model or _model_name(predictions)
    de_source = "computed" if de is None else "given"
    de = _resolve_de(de, dataset, names, specs)
    reference, reference_source = _resolve_reference(systema_reference, dataset, split, specs)
    real_de, de_backend = _resolve_real_de(real_de, dataset, names, specs, de_backend)

    def prediction_and_truth(name: str, rng: np.random.Generator):
        pred = _rows(predictions.X, labels == name, gene_columns)  # (n_pred, G)
        if not np.all(np.isfinite(pred)):
            raise PredictionValidationError(
                f"predictions for condition {name!r} contain NaN or infinite values"
            )
        return pred, dataset.expression(name)  # (n_pred, G), (n_true, G)

    results = _score_pairs(
        prediction_and_truth,
        dataset,
        split,
        names,
        specs=specs,
        de=de,
        reference=reference,
        model=model_name,
        seed=seed,
        sampling_seed=seed if sampling_seed is None else sampling_seed,
        max_cells=max_cells,
        energy_pcs=energy_pcs,
        exclude_target_genes=exclude_target_genes,
        real_de=real_de,
        de_backend=de_backend,
    )
    results.attrs["perturbflow"] = _provenance(
        "evaluate",
        seed,
        max_cells,
        energy_pcs,
        exclude_target_genes,
        de_source,
        reference_source,
        _overlap_source(specs, de_backend),
    )
    return results


def noise_ceiling(
    dataset: PerturbationDataset,
    split: Split | None,
    *,
    seed: int = 0,
    sampling_seed: int | None = None,
    conditions: Sequence[str] | None = None,
    de: Mapping[str, np.ndarray] | None = None,
    max_cells: int = 500,
    energy_pcs: int | None = 50,
    metrics: Sequence[str] | None = None,
    exclude_target_genes: bool = True,
    correction: Literal["perfect_model", "none"] = "perfect_model",
    systema_reference: np.ndarray | None = None,
    de_overlap: bool = False,
    de_backend: str = "auto",
) -> pd.DataFrame:
    """What a perfect model could reach on each condition, estimated from two halves of its cells.

    Each condition's ``n`` real cells are shuffled with ``default_rng([sampling seed,
    crc32(condition)])`` (``sampling_seed``, else ``seed``); the first ``a = n // 2`` play the
    prediction, the other ``b = n - a`` the truth, scored with the code of :func:`evaluate`. DE
    genes, the control mean and the Systema reference still come from all real cells. Arguments as
    in :func:`evaluate`; the ``model`` column is ``"noise_ceiling"``. Every condition needs at
    least 2 cells.

    A model is scored against the mean of all ``n`` cells, a half against ``b`` cells with a
    prediction of ``a`` noisy cells, so the raw split-half scores understate what a model can
    reach, most with few cells or few genes. ``correction="perfect_model"`` (default) rescales
    them to the expected score, under :func:`evaluate`, of a perfect model: one that draws
    arbitrarily many cells from each condition's true distribution, so its mean is the true
    mean ``mu`` and at most ``max_cells`` of its cells enter the energy distance. With cell noise
    of variance ``sigma_g^2`` per gene, independent across cells:

    - ``mse_de20`` × ``a b / n^2``. A half's error ``E(xbar_a - xbar_b)^2 = sigma^2 (1/a + 1/b)``,
      the perfect model's ``E(mu - xbar_n)^2 = sigma^2 / n``. Exact in expectation for DE genes
      chosen independently of the cells; for DE genes chosen on these cells (the default) the
      perfect model's error is somewhat larger, so the ceiling stays an upper bound.
    - ``pearson_delta``, ``pearson_delta_de20``, ``pearson_systema``, ``pearson_systema_de20``:
      disattenuated. Across genes, the change from control (or from the Systema reference, a
      vector fixed like the control mean) is signal of variance ``V`` plus mean noise
      ``N = mean(sigma_g^2)``; the halves correlate ``r = 1 / sqrt((1 + k/a)(1 + k/b))`` with
      ``k = N / V``, the perfect model and the ``n``-cell truth ``r* = 1 / sqrt(1 + k/n)``.
      ``k`` is solved from ``r``; for equal halves ``r* = sqrt(2r / (1 + r))``, the square root
      of Spearman–Brown's ``2r / (1 + r)`` (which is the correlation of two ``n``-cell
      replicates, not of the truth with one). ``r <= 0`` (no
      signal the halves share) gives ``r* = 0``. A large-``G`` approximation: over 20 DE genes
      the half correlation is noisy and the correction concave, so the corrected value averages
      below the perfect model's (simulated Gaussian cells: by about 0.1 when the halves
      correlate 0.1, 0.03 at 0.4, under 0.01 from 0.7 on); over 200 genes within 0.01.
    - ``energy_distance``, ``energy_distance_genes`` × ``(1/m + 1/n') / (1/a' + 1/b')`` with
      ``m = max_cells`` and ``a'``, ``b'``, ``n'`` the sizes after subsampling to ``max_cells``.
      The V-statistic between two samples of one distribution has expectation ``D (1/p + 1/q)``
      for sample sizes ``p``, ``q`` (``D = E|X - X'|``) in any feature space, exactly.

    Left as measured, because no correction follows from cell counts alone:

    - ``direction_acc_de20``: a gene's sign agreement depends on its own effect-to-noise ratio
      ``z`` (halves agree with probability ``Phi(z)^2 + (1 - Phi(z))^2``, the perfect model with
      ``Phi(sqrt(2) z)``); pooling ``z`` over genes overstates the ceiling when effects differ.
      The split-half value is a lower bound of the perfect model's.
    - ``discrimination_l1``: a rank among every condition's half-cell truth, a function of all
      conditions' noise at once.
    - ``overlap_at_*`` (``de_overlap=True``): each half's DE genes against control; a half has
      about ``n/2`` cells where a model predicts ``n_cells``, and the test's power grows with
      cells, so the split-half value is no bound on a model's.
    - Any metric registered later, until a rule for it is added here.

    ``correction="none"`` returns the raw split-half scores. ``attrs["perturbflow"]`` records the
    correction and the metrics it changed.
    """
    if correction not in CEILING_CORRECTIONS:
        raise EvaluationError(
            f"correction must be one of {', '.join(map(repr, CEILING_CORRECTIONS))}, "
            f"got {correction!r}"
        )
    names = _resolve_conditions(conditions, split, dataset)
    specs = _resolve_metrics(metrics, de_overlap)
    counts = dataset.condition_labels.value_counts()
    too_small = [f"{name!r} ({int(counts.get(name, 0))})" for name in names if counts[name] < 2]
    if too_small:
        raise EvaluationError(
            "the noise ceiling splits each condition's cells in two halves and needs at least 2 "
            f"cells; too few in {', '.join(too_small)}"
        )
    de_source = "computed" if de is None else "given"
    de = _resolve_de(de, dataset, names, specs)
    reference, reference_source = _resolve_reference(systema_reference, dataset, split, specs)
    de_backend = resolve_backend(de_backend) if _needs_de_tests(specs) else de_backend

    def two_halves(name: str, rng: np.random.Generator):
        cells = dataset.expression(name)  # (n, G)
        order = rng.permutation(len(cells))
        return cells[order[: len(cells) // 2]], cells[order[len(cells) // 2 :]]

    results = _score_pairs(
        two_halves,
        dataset,
        split,
        names,
        specs=specs,
        de=de,
        reference=reference,
        model=NOISE_CEILING_MODEL,
        seed=seed,
        sampling_seed=seed if sampling_seed is None else sampling_seed,
        max_cells=max_cells,
        energy_pcs=energy_pcs,
        exclude_target_genes=exclude_target_genes,
        real_de=None,
        de_backend=de_backend,
    )
    corrected: list[str] = []
    if correction == "perfect_model":
        n = results["condition"].map(counts).to_numpy(dtype=np.float64)  # (rows,)
        for metric, rescale in _CEILING_RULES.items():
            rows = (results["metric"] == metric).to_numpy()
            if rows.any():
                values = results.loc[rows, "value"].to_numpy(dtype=np.float64)
                results.loc[rows, "value"] = rescale(values, n[rows], max_cells)
                corrected.append(metric)
    results.attrs["perturbflow"] = _provenance(
        "noise_ceiling",
        seed,
        max_cells,
        energy_pcs,
        exclude_target_genes,
        de_source,
        reference_source,
        _overlap_source(specs, de_backend),
    ) | {"ceiling_correction": correction, "corrected_metrics": corrected}
    return results


def condition_sizes(dataset: PerturbationDataset, conditions: Sequence[str]) -> pd.DataFrame:
    """Real cells per condition and measured genes: what a noise ceiling's precision rests on.

    Returns
    -------
    Columns :data:`SIZE_COLUMNS`, one row per condition in the given order; pass it to
    :func:`perturbflow.eval.summary.benchmark_summary` (``sizes=``) to name the counts where the
    ceiling is not informative.
    """
    names = _resolve_conditions(conditions, None, dataset)
    counts = dataset.condition_labels.value_counts()
    table = pd.DataFrame(
        {
            "condition": names,
            "n_cells": [int(counts[name]) for name in names],
            "n_genes": int(dataset.n_genes),
        },
        columns=list(SIZE_COLUMNS),
    )
    return table.astype({"n_cells": np.int64, "n_genes": np.int64})


def training_reference(
    dataset: PerturbationDataset, split: Split | None
) -> tuple[np.ndarray | None, list[str]]:
    """The Systema reference: the mean of the training perturbations' pseudobulks.

    The training perturbations are ``split.train`` without control and without any name that is
    also in ``split.test`` (in a context split such a name stands for other lines' cells, while the
    dataset's cells of that name are the held-out truth). Each condition with cells in ``dataset``
    counts once, whatever its cell count, so the reference is the average perturbation *response*
    rather than the average perturbed cell. Training names without cells in ``dataset`` are left
    out (logged).

    Returns
    -------
    ``(reference, conditions)``: the ``(G,)`` float64 mean over ``dataset.genes`` and the
    conditions averaged; ``(None, [])`` when ``split`` is ``None`` or none of its training
    perturbations has cells in ``dataset`` (logged as a warning: the Systema metrics are ``nan``).
    """
    if split is None:
        logger.warning("Systema metrics are nan: no split names the training perturbations")
        return None, []
    held_out = set(split.test)
    training = [n for n in split.train if n != CONTROL_NAME and n not in held_out]
    known = set(dataset.conditions)
    present = [name for name in training if name in known]
    if not present:
        logger.warning(
            "Systema metrics are nan: none of the split's %d training perturbation(s) has cells in "
            "the dataset (pass systema_reference= to score them)",
            len(training),
        )
        return None, []
    if len(present) < len(training):
        logger.info(
            "Systema reference: %d of %d training perturbations have no cells in the dataset and "
            "are left out",
            len(training) - len(present),
            len(training),
        )
    return _condition_means(dataset, present).mean(axis=0), present


def _resolve_reference(
    given: np.ndarray | None,
    dataset: PerturbationDataset,
    split: Split | None,
    specs: list[MetricSpec],
) -> tuple[np.ndarray | None, str]:
    """The Systema reference ``(G,)`` (or ``None``) and how it was made, for the provenance."""
    if not any(spec.kind == "reference" for spec in specs):
        return None, "not used"
    if given is not None:
        reference = np.asarray(given, dtype=np.float64)
        if reference.shape != (dataset.n_genes,) or not np.all(np.isfinite(reference)):
            raise EvaluationError(
                f"systema_reference must be a finite vector over the dataset's {dataset.n_genes} "
                f"genes, got shape {reference.shape}"
            )
        return reference, "given"
    reference, conditions = training_reference(dataset, split)
    if reference is None:
        return None, "none: no training perturbations in the dataset (Systema metrics nan)"
    return reference, f"mean of {len(conditions)} training perturbation pseudobulks"


def _condition_means(dataset: PerturbationDataset, names: list[str]) -> np.ndarray:
    """Pseudobulk of each condition in ``names`` ``(K, G)``, float64, in one pass over the cells."""
    if dataset.adata.isbacked:  # no matrix product on a backed matrix: read condition by condition
        return np.vstack([dataset.expression(n).mean(axis=0, dtype=np.float64) for n in names])
    codes = pd.Categorical(dataset.condition_labels.to_numpy(), categories=names).codes  # (N,)
    cells = np.flatnonzero(codes >= 0)
    counts = np.bincount(codes[cells], minlength=len(names)).astype(np.float64)  # (K,)
    averaging = sp.csr_matrix(
        (1.0 / counts[codes[cells]], (codes[cells], cells)),
        shape=(len(names), dataset.adata.n_obs),
    )  # (K, N)
    means = averaging @ dataset.adata.X  # (K, G)
    return np.asarray(means.toarray() if sp.issparse(means) else means, dtype=np.float64)


# -- ceiling corrections: split-half score -> perfect model vs all n cells ----------------------


def _halves(n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sizes ``(a, b)`` of the two halves of ``n`` cells, as :func:`noise_ceiling` splits them."""
    a = np.floor(n / 2.0)
    return a, n - a


def _mean_error_to_full(value: np.ndarray, n: np.ndarray, max_cells: int) -> np.ndarray:
    """``E(xbar_a - xbar_b)^2 = sigma^2 (1/a + 1/b)`` → ``E(mu - xbar_n)^2 = sigma^2 / n``."""
    a, b = _halves(n)
    return value * a * b / n**2


def _correlation_to_full(value: np.ndarray, n: np.ndarray, max_cells: int) -> np.ndarray:
    """Half-vs-half correlation ``r`` → perfect prediction vs the ``n``-cell truth, ``r*``.

    Solves ``(1 + k/a)(1 + k/b) = 1/r^2`` for the noise-to-signal ratio ``k >= 0`` (the stable
    root of ``k^2/(ab) + k (1/a + 1/b) - (1/r^2 - 1) = 0``), then ``r* = 1/sqrt(1 + k/n)``.
    """
    a, b = _halves(n)
    r = np.clip(value, 0.0, 1.0)  # no shared signal → k = ∞ → r* = 0
    with np.errstate(divide="ignore", invalid="ignore"):
        q = 1.0 / r**2 - 1.0
        linear, quadratic = 1.0 / a + 1.0 / b, 1.0 / (a * b)
        k = 2.0 * q / (linear + np.sqrt(linear**2 + 4.0 * quadratic * q))
        corrected = 1.0 / np.sqrt(1.0 + k / n)
    return np.where(np.isnan(value), np.nan, np.where(r > 0, corrected, 0.0))


def _energy_to_full(value: np.ndarray, n: np.ndarray, max_cells: int) -> np.ndarray:
    """V-statistic ``E = D (1/p + 1/q)`` for samples of sizes ``p``, ``q`` of one distribution:
    halves ``(a', b')`` → ``max_cells`` perfect cells vs the ``n'`` real ones (all capped)."""
    a, b = (np.minimum(half, max_cells) for half in _halves(n))
    return value * (1.0 / max_cells + 1.0 / np.minimum(n, max_cells)) / (1.0 / a + 1.0 / b)


_CEILING_RULES = {
    "pearson_delta": _correlation_to_full,
    "pearson_delta_de20": _correlation_to_full,
    "pearson_systema": _correlation_to_full,
    "pearson_systema_de20": _correlation_to_full,
    "mse_de20": _mean_error_to_full,
    "energy_distance": _energy_to_full,
    "energy_distance_genes": _energy_to_full,
}


def _score_pairs(
    cells_of,
    dataset: PerturbationDataset,
    split: Split | None,
    names: list[str],
    *,
    specs: list[MetricSpec],
    de: Mapping[str, np.ndarray],
    reference: np.ndarray | None,
    model: str,
    seed: int,
    sampling_seed: int,
    max_cells: int,
    energy_pcs: int | None,
    exclude_target_genes: bool,
    real_de: DETable | None,
    de_backend: str,
) -> pd.DataFrame:
    """Score ``cells_of(name, rng) -> (predicted cells, true cells)`` for every condition.

    Shared by :func:`evaluate` and :func:`noise_ceiling`: pseudobulk means over all cells, cell
    samples of at most ``max_cells`` per side drawn from each condition's own stream. The DE
    overlap metrics test all cells of each side (the true side only when ``real_de`` is
    ``None``) against the real control cells.
    """
    tests = _needs_de_tests(specs)
    control = dataset.control_expression() if tests else None  # (n_ctrl, G)
    pred_means, true_means, pred_cells, true_cells = [], [], [], []
    pred_de, true_de = [], []
    for name in names:
        rng = _condition_rng(sampling_seed, name)
        pred, true = cells_of(name, rng)  # (n_pred, G), (n_true, G)
        pred_means.append(pred.mean(axis=0, dtype=np.float64))
        true_means.append(true.mean(axis=0, dtype=np.float64))
        pred_cells.append(_subsample(pred, max_cells, rng))
        true_cells.append(_subsample(true, max_cells, rng))
        if tests:  # one condition at a time: no side's cells are kept for all conditions
            pred_de.append(de_table({name: pred}, control, dataset.genes, backend=de_backend))
            if real_de is None:
                true_de.append(de_table({name: true}, control, dataset.genes, backend=de_backend))
    return _score(
        names,
        subgroups=[_subgroup(name, split) for name in names],
        specs=specs,
        pred_means=np.vstack(pred_means),
        true_means=np.vstack(true_means),
        ctrl_mean=dataset.control_expression().mean(axis=0, dtype=np.float64),
        reference=reference,
        de=de,
        exclude=_target_mask(names, dataset.genes, exclude_target_genes),
        pred_cells=pred_cells,
        true_cells=true_cells,
        pca=_control_pca(dataset, energy_pcs, specs),
        model=model,
        seed=seed,
        de_tests=(
            real_de.select(names) if real_de is not None else DETable.concat(true_de),
            DETable.concat(pred_de),
        )
        if tests
        else None,
    )


def summarize(results: pd.DataFrame) -> pd.DataFrame:
    """Mean ± sd of each metric per (subgroup, model, metric).

    Every (condition, seed) row counts once; ``nan`` values (e.g. Pearson of a constant prediction)
    are skipped and counted in ``n_missing``. ``sd`` uses ``ddof=1`` (``nan`` for a single value).
    ``n_conditions`` counts distinct conditions with a value, ``n_seeds`` distinct seeds. For mean
    ± sd *over seeds*, summarise each seed's rows, then aggregate the per-seed means.

    Returns
    -------
    Columns :data:`SUMMARY_COLUMNS`, groups in order of first appearance.
    """
    absent = [column for column in RESULT_COLUMNS if column not in results.columns]
    if absent:
        raise EvaluationError(
            f"results lack column(s) {absent}; expected the output of evaluate()/noise_ceiling() "
            f"with columns {list(RESULT_COLUMNS)}"
        )
    rows = []
    for (subgroup, model, metric), group in results.groupby(
        ["subgroup", "model", "metric"], sort=False, dropna=False
    ):
        values = group["value"].to_numpy(dtype=np.float64)
        present = ~np.isnan(values)
        kept = values[present]
        rows.append(
            {
                "subgroup": subgroup,
                "model": model,
                "metric": metric,
                "mean": float(kept.mean()) if kept.size else float("nan"),
                "sd": float(kept.std(ddof=1)) if kept.size > 1 else float("nan"),
                "n_conditions": int(group.loc[present, "condition"].nunique()),
                "n_seeds": int(group["seed"].nunique()),
                "n_missing": int((~present).sum()),
            }
        )
    return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))


# -- shared scoring ------------------------------------------------------------------------------


def _score(
    names: list[str],
    *,
    subgroups: list[str],
    specs: list[MetricSpec],
    pred_means: np.ndarray,
    true_means: np.ndarray,
    ctrl_mean: np.ndarray,
    reference: np.ndarray | None,
    de: Mapping[str, np.ndarray] | None,
    exclude: np.ndarray | None,
    pred_cells: list[np.ndarray],
    true_cells: list[np.ndarray],
    pca: tuple[np.ndarray, np.ndarray] | None,
    model: str,
    seed: int,
    de_tests: tuple[DETable, DETable] | None = None,
) -> pd.DataFrame:
    """Run ``specs`` on prepared arrays: means ``(C, G)``, ctrl ``(G,)``, cells ``[(n_i, G)]``.

    ``reference`` ``(G,)`` is the Systema reference; ``None`` makes the ``"reference"`` metrics
    ``nan`` (the caller logged why). ``de_tests`` are the real and predicted DE tables of
    ``names``, in that order, for the ``"de_overlap"`` metrics.
    """
    values: dict[str, np.ndarray] = {}
    for spec in specs:
        if spec.kind == "mean":
            values[spec.name] = np.array(
                [
                    spec.fn(pred_means[i], true_means[i], ctrl_mean, np.asarray(de[name]))
                    for i, name in enumerate(names)
                ]
            )
        elif spec.kind == "reference":
            values[spec.name] = np.array(
                [
                    np.nan
                    if reference is None
                    else spec.fn(pred_means[i], true_means[i], reference, np.asarray(de[name]))
                    for i, name in enumerate(names)
                ]
            )
        elif spec.kind == "set":
            values[spec.name] = np.asarray(spec.fn(pred_means, true_means, exclude))
        elif spec.kind in ("cells", "gene_cells"):
            space = pca if spec.kind == "cells" else None
            values[spec.name] = np.array(
                [
                    spec.fn(_project(pred, space), _project(true, space))
                    for pred, true in zip(pred_cells, true_cells, strict=True)
                ]
            )
        elif spec.kind == "de_overlap" and de_tests is not None:
            values[spec.name] = np.asarray(spec.fn(*de_tests))
        else:  # a registry entry with a kind evaluate() does not know how to call
            raise EvaluationError(f"metric {spec.name!r} has unsupported kind {spec.kind!r}")
    rows = [
        (name, subgroup, spec.name, float(values[spec.name][i]), model, int(seed))
        for i, (name, subgroup) in enumerate(zip(names, subgroups, strict=True))
        for spec in specs
    ]
    results = pd.DataFrame(rows, columns=list(RESULT_COLUMNS))
    return results.astype({"value": np.float64, "seed": np.int64})


def _resolve_conditions(
    conditions: Sequence[str] | None, split: Split | None, dataset: PerturbationDataset
) -> list[str]:
    if conditions is None:
        if split is None:
            raise EvaluationError("pass a split or the conditions to evaluate")
        conditions = split.test
    if isinstance(conditions, str):
        conditions = [conditions]
    try:
        names = list(dict.fromkeys(canonical(name) for name in conditions))
    except ConditionError as error:
        raise EvaluationError(f"cannot evaluate: {error}") from error
    if not names:
        raise EvaluationError("no conditions to evaluate")
    if CONTROL_NAME in names:
        raise EvaluationError(
            f"{CONTROL_NAME!r} is the reference of every metric and cannot be evaluated; "
            "remove it from the conditions"
        )
    unknown = [name for name in names if name not in set(dataset.conditions)]
    if unknown:
        raise EvaluationError(
            f"condition(s) {_preview(unknown)} have no real cells in the dataset; "
            "they cannot be evaluated"
        )
    return names


def _resolve_metrics(metrics: Sequence[str] | None, de_overlap: bool = False) -> list[MetricSpec]:
    """The metrics asked for (default: those on by default), plus the DE overlap if asked."""
    if metrics is None:
        specs = [spec for spec in METRICS.values() if spec.by_default]
    else:
        if isinstance(metrics, str):
            metrics = [metrics]
        specs = [get_metric(name) for name in dict.fromkeys(metrics)]
    if de_overlap:
        chosen = {spec.name for spec in specs}
        specs += [s for s in METRICS.values() if s.kind == "de_overlap" and s.name not in chosen]
    return specs


def _needs_de_tests(specs: list[MetricSpec]) -> bool:
    return any(spec.kind == "de_overlap" for spec in specs)


def real_de_table(
    dataset: PerturbationDataset, conditions: Sequence[str], *, backend: str = "auto"
) -> DETable:
    """DE tests of the real cells of ``conditions`` against the real control cells, for
    :func:`evaluate`'s ``real_de`` (computed once, reused for every model)."""
    names = _resolve_conditions(conditions, None, dataset)
    control = dataset.control_expression()  # (n_ctrl, G)
    return DETable.concat(
        [
            de_table({name: dataset.expression(name)}, control, dataset.genes, backend=backend)
            for name in names
        ]
    )


def _resolve_real_de(
    given: DETable | None,
    dataset: PerturbationDataset,
    names: list[str],
    specs: list[MetricSpec],
    backend: str,
) -> tuple[DETable | None, str]:
    """The given real DE tests (checked) and the backend the predictions' tests use."""
    if not _needs_de_tests(specs):
        return None, backend
    if given is None:
        return None, resolve_backend(backend)
    absent = [name for name in names if name not in given.conditions]
    if absent or not given.genes.equals(dataset.genes):
        raise EvaluationError(
            f"the given real DE tests lack {len(absent)} evaluated condition(s) "
            f"({_preview(absent)}) or differ in genes; compute them with "
            "perturbflow.eval.evaluate.real_de_table(dataset, conditions)"
        )
    return given, given.backend


def _overlap_source(specs: list[MetricSpec], backend: str) -> str:
    return describe_backend(backend) if _needs_de_tests(specs) else "not computed"


def _resolve_de(
    de: Mapping[str, np.ndarray] | None,
    dataset: PerturbationDataset,
    names: list[str],
    specs: list[MetricSpec],
) -> Mapping[str, np.ndarray] | None:
    if not any(spec.kind in ("mean", "reference") for spec in specs):
        return de
    if de is None:
        return de_genes(dataset, names)
    absent = [name for name in names if name not in de]
    if absent:
        raise EvaluationError(
            f"the given DE genes lack {len(absent)} evaluated condition(s): {_preview(absent)}; "
            "compute them with perturbflow.eval.de_genes(dataset, conditions)"
        )
    return de


def _prediction_labels(predictions: ad.AnnData) -> np.ndarray:
    """Canonical condition name of each predicted cell ``(n_cells,)``."""
    if not isinstance(predictions, ad.AnnData):
        raise PredictionValidationError(
            f"predictions must be an AnnData, got {type(predictions).__name__}"
        )
    if CONDITION_COLUMN not in predictions.obs.columns:
        raise PredictionValidationError(
            f"predictions.obs has no column {CONDITION_COLUMN!r} naming each predicted cell's "
            f"condition; columns: {_preview(list(predictions.obs.columns))}"
        )
    raw = predictions.obs[CONDITION_COLUMN].astype(str).to_numpy()
    try:
        mapping = {label: canonical(label) for label in pd.unique(raw)}
    except ConditionError as error:
        raise PredictionValidationError(
            f"predictions.obs[{CONDITION_COLUMN!r}]: {error}"
        ) from error
    return np.array([mapping[label] for label in raw], dtype=object)


def _align_genes(predictions: ad.AnnData, genes: pd.Index) -> np.ndarray:
    """Column of ``predictions`` holding each dataset gene ``(G,)``."""
    var_names = predictions.var_names
    duplicated = var_names[var_names.duplicated()].unique()
    if len(duplicated):
        raise PredictionValidationError(
            f"predictions have duplicate gene name(s): {_preview(list(duplicated))}"
        )
    missing = genes.difference(var_names, sort=False)
    extra = var_names.difference(genes, sort=False)
    if len(missing) or len(extra):
        parts = []
        if len(missing):
            parts.append(f"{len(missing)} dataset gene(s) missing: {_preview(list(missing))}")
        if len(extra):
            parts.append(f"{len(extra)} gene(s) not in the dataset: {_preview(list(extra))}")
        raise PredictionValidationError(
            "predicted genes do not match the dataset's genes; " + "; ".join(parts)
        )
    return var_names.get_indexer(genes)


def _rows(matrix: Any, mask: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """Dense float32 block of ``matrix`` for the cells in ``mask`` and ``columns`` ``(n, G)``."""
    rows = np.flatnonzero(mask)
    if matrix is None:
        raise PredictionValidationError("predictions.X is empty")
    if sp.issparse(matrix):
        return sp.csr_matrix(matrix[rows])[:, columns].toarray().astype(np.float32, copy=False)
    return np.asarray(matrix[rows], dtype=np.float32)[:, columns]


def _model_name(predictions: ad.AnnData) -> str:
    info = predictions.uns.get("perturbflow", {})
    name = info.get("model") if isinstance(info, Mapping) else None
    return str(name) if name else _UNKNOWN_MODEL


def _subgroup(name: str, split: Split | None) -> str:
    if split is None:
        return "unassigned"
    subgroups = getattr(split, "subgroups", None) or {}
    if name in subgroups:
        return str(subgroups[name])
    for part in ("test", "val", "train"):
        if name in getattr(split, part, ()):
            return part
    return "unassigned"


def _target_mask(names: list[str], genes: pd.Index, exclude: bool) -> np.ndarray | None:
    """``(C, G)`` True at each condition's perturbed genes (those that are measured)."""
    if not exclude:
        return None
    return np.vstack([genes.isin(list(parse_condition(name))) for name in names])


def _condition_rng(seed: int, name: str) -> np.random.Generator:
    # crc32 is stable across processes, unlike hash(); the condition stream is independent of
    # which other conditions are evaluated.
    return np.random.default_rng([int(seed), zlib.crc32(name.encode("utf-8"))])


def _subsample(cells: np.ndarray, max_cells: int, rng: np.random.Generator) -> np.ndarray:
    if max_cells < 1:
        raise EvaluationError(f"max_cells must be at least 1, got {max_cells}")
    if len(cells) <= max_cells:
        return cells
    return cells[np.sort(rng.choice(len(cells), size=max_cells, replace=False))]


def _control_pca(
    dataset: PerturbationDataset, n_pcs: int | None, specs: list[MetricSpec]
) -> tuple[np.ndarray, np.ndarray] | None:
    """Centre ``(G,)`` and top principal axes ``(k, G)`` of the real control cells, float64."""
    if n_pcs is None or not any(spec.kind == "cells" for spec in specs):
        return None
    if n_pcs < 1:
        raise EvaluationError(f"energy_pcs must be a positive integer or None, got {n_pcs}")
    from sklearn.decomposition import PCA

    control = dataset.control_expression()  # (n_ctrl, G)
    n_components = min(n_pcs, *control.shape)
    if n_components < n_pcs:
        logger.info("energy distance: %d PCs requested, %d possible", n_pcs, n_components)
    # Fixed random_state: the space must be the same for every model and seed.
    pca = PCA(n_components=n_components, random_state=0).fit(control)
    return pca.mean_.astype(np.float64), pca.components_.astype(np.float64)


def _project(cells: np.ndarray, pca: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    # float64 so that identical cells stay identical up to ~1e-15, not float32 rounding.
    cells = cells.astype(np.float64, copy=False)  # (n, G)
    if pca is None:
        return cells
    centre, axes = pca
    return (cells - centre) @ axes.T  # (n, k)


def _provenance(
    function: str,
    seed: int,
    max_cells: int,
    energy_pcs: int | None,
    exclude: bool,
    de_source: str,
    reference_source: str,
    overlap_source: str,
) -> dict[str, Any]:
    return {
        "function": function,
        "seed": int(seed),
        "max_cells": int(max_cells),
        "energy_pcs": energy_pcs,
        "energy_space": "raw genes" if energy_pcs is None else "PCA of control cells",
        "energy_genes_space": "raw genes",
        "systema_reference": reference_source,
        "exclude_target_genes": bool(exclude),
        "de_genes": "top-20 t-test vs ctrl" if de_source == "computed" else "given",
        "de_overlap": overlap_source,
    }


def _preview(items: Sequence[Any]) -> str:
    shown = ", ".join(repr(item) for item in list(items)[:_PREVIEW])
    return shown + (f", … ({len(items) - _PREVIEW} more)" if len(items) > _PREVIEW else "")
