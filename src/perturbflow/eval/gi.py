"""Genetic-interaction (GI) scores of double perturbations, after Norman et al. (Science 2019).

Norman's model explains the mean expression change of a double by those of its two singles::

    delta_AB ≈ c_A · delta_A + c_B · delta_B        (over genes, no intercept)

fitted robustly (Theil–Sen) and by plain least squares. Summary statistics of the fit describe the
interaction: *magnitude* (synergy when large, buffering/suppression when small), *dominance*
(epistasis: one single explains the double), *model fit* (neomorphism when poor), *similarity* of
the double to its singles and *equality of contribution* of the two singles.

Every score is named after the column of the authors' table that it mirrors
(``regr_fits_final.csv`` of github.com/thomasmaxwellnorman/Perturbseq_GI, Table S9 of the paper),
so our scores and the published ones can be compared column by column
(:func:`compare_with_reference`). "first" is gene A and "second" gene B; in :func:`gi_table` A is
the alphabetically first gene of the canonical name ``"A+B"``.

Where the definitions come from
-------------------------------
*Read in the authors' code* (notebook ``GI_model_fits.ipynb``, function ``calc_corr_stats`` and
the cell after it, commit ``525e2cc``): ``coef_*`` (least squares), ``ts_coef_*`` (Theil–Sen),
``score``/``ts_score`` (R²), ``dcor``, ``dcor_singles``, ``ts_linear_dcor``, ``corr_first``,
``corr_second``, ``corr_sum``, ``corr_fit``, ``corr_first_second``, ``ts_ratio``,
``ts_difference``, ``abs_log_ts_ratio``, ``ts_norm``, ``ts_norm2``, ``coef_norm2``. We also checked
on the published table that ``ts_norm`` is the *mean* of ``|c_A|`` and ``|c_B|`` (not the
Euclidean norm, which is ``ts_norm2``) and that ``coef_norm`` is the mean of the absolute
least-squares coefficients.

*Inferred, not read in their code*: ``dcor_first``/``dcor_second`` (taken as the distance
correlation of one single with the double, as GEARS and later re-implementations do) and
``dcor_ratio`` (min/max of those two; GEARS' "equality of contribution"; it is not a column of
the published table, :func:`load_norman_reference` derives it from ``dcor_first``/``dcor_second``).
Columns of the table that we do not compute (definitions unknown): ``mad_explained``,
``residual_dcor``, ``partial_dcor_*``, ``ts_frac``, ``partial_ratio`` and their relatives.

Known differences from the paper
--------------------------------
- The paper fitted the mean *normalised expression* of "abundant" genes (mean > 0.5 UMI),
  excluding every perturbed gene, for doubles with more than 10 DE genes; we fit whatever deltas
  the caller passes (typically log1p-CP10k mean differences) on ``gene_subset``, excluding the
  perturbed genes by default. Scores are therefore comparable in rank, not in absolute value.
- Theil–Sen uses ``max_subpopulation=10_000`` and ``random_state=0`` by default; the paper used
  ``1e5`` and ``1000`` (ten times slower; pass them to reproduce the setting).
- ``abs_log_ts_ratio`` is ``inf`` when exactly one coefficient is 0; the paper replaced ``inf``
  by 0. ``ts_ratio`` is ``nan`` when ``c_B`` is 0.
- ``dcor`` is the biased (V-statistic) distance correlation of Székely et al. 2007, as in the
  ``dcor`` package the authors used, implemented here in row chunks (memory ``O(G)`` per row).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.spatial.distance import cdist
from scipy.stats import rankdata
from sklearn.linear_model import TheilSenRegressor

from perturbflow.data.conditions import (
    ConditionError,
    ConditionParser,
    format_condition,
    parse_condition,
)

__all__ = [
    "COMPARISON_COLUMNS",
    "DEFAULT_COMPARE_SCORES",
    "GI_SCORE_COLUMNS",
    "NORMAN_REFERENCE_FILE",
    "SCORE_ALIASES",
    "GIError",
    "GIReferenceError",
    "GIScores",
    "compare_gi",
    "compare_with_reference",
    "distance_correlation",
    "fit_gi",
    "gi_table",
    "load_norman_reference",
]

logger = logging.getLogger(__name__)

NORMAN_REFERENCE_FILE = "norman_GI_regr_fits_final.csv"
_NORMAN_REFERENCE_FOLDER = "norman2019_metadata"

# The vocabulary -> the paper's column that carries it.
SCORE_ALIASES: Mapping[str, str] = {
    "magnitude": "ts_norm2",
    "dominance": "abs_log_ts_ratio",
    "model_fit": "corr_fit",
    "similarity": "dcor",
    "equality_of_contribution": "dcor_ratio",
}

# Scores compared by default: orientation-free (they do not change when A and B are swapped).
DEFAULT_COMPARE_SCORES: tuple[str, ...] = (
    "ts_norm2",
    "ts_norm",
    "abs_log_ts_ratio",
    "corr_fit",
    "ts_linear_dcor",
    "dcor",
    "dcor_singles",
    "dcor_ratio",
)
COMPARISON_COLUMNS: tuple[str, ...] = ("score", "pearson", "spearman", "n_doubles")

# Columns whose meaning depends on which gene is "first": swapped, inverted or negated on re-orienting.
_FIRST_SECOND_PAIRS: tuple[tuple[str, str], ...] = (
    ("ts_coef_first", "ts_coef_second"),
    ("coef_first", "coef_second"),
    ("corr_first", "corr_second"),
    ("dcor_first", "dcor_second"),
)
_RECIPROCAL_ON_SWAP = ("ts_ratio",)
_NEGATED_ON_SWAP = ("ts_difference",)

# Distance blocks hold about this many entries per variable (memory per block ~ 8 MB).
_CHUNK_ENTRIES = 1_000_000


class GIError(ValueError):
    """Inputs to a genetic-interaction computation are invalid."""


class GIReferenceError(GIError):
    """The published Norman 2019 GI table is missing or not as expected."""


@dataclass(frozen=True)
class GIScores:
    """Norman 2019 interaction scores of one double A+B (fields named after the paper's columns).

    Coefficients of ``delta_AB ≈ c_A·delta_A + c_B·delta_B`` (no intercept):

    - ``ts_coef_first``, ``ts_coef_second``: ``c_A``, ``c_B`` by Theil–Sen (paper: same names).
    - ``coef_first``, ``coef_second``: ``c_A``, ``c_B`` by least squares (paper: same names).

    Summaries of the coefficients (paper: same names):

    - ``ts_norm2`` = ``sqrt(c_A² + c_B²)`` — the *magnitude* of the interaction.
    - ``ts_norm`` = ``(|c_A| + |c_B|) / 2`` — the paper's other magnitude.
    - ``coef_norm`` = ``(|coef_first| + |coef_second|) / 2``, ``coef_norm2`` = their Euclidean norm.
    - ``ts_ratio`` = ``c_A / c_B`` (``nan`` when ``c_B == 0``); ``ts_difference`` = ``c_A - c_B``.
    - ``abs_log_ts_ratio`` = ``|log10(|c_A| / |c_B|)|`` — *dominance* (``inf`` when exactly one
      coefficient is 0, ``nan`` when both are).

    Quality of the fit (paper: same names):

    - ``score``: R² of the least-squares fit, ``1 - SS_res / SS_tot`` with ``SS_tot`` centred
      (``sklearn``'s ``score``); ``ts_score``: the same for the Theil–Sen fit.
    - ``corr_fit``: Pearson correlation of the *least-squares* fitted and the observed
      ``delta_AB`` — *model fit* (the paper used the least-squares fit here, not Theil–Sen).
    - ``ts_linear_dcor``: distance correlation of the Theil–Sen fitted and the observed
      ``delta_AB``.

    Similarity of the double to its singles:

    - ``dcor``: distance correlation of the two-column matrix ``[delta_A, delta_B]`` with
      ``delta_AB`` — *similarity* (paper: same name).
    - ``dcor_first`` = dcor(``delta_A``, ``delta_AB``), ``dcor_second`` = dcor(``delta_B``,
      ``delta_AB``) (paper: same names; definition inferred, see the module docstring).
    - ``dcor_ratio`` = ``min(dcor_first, dcor_second) / max(...)`` — *equality of contribution*
      (not in the published table; inferred from GEARS).
    - ``dcor_singles`` = dcor(``delta_A``, ``delta_B``) (paper: same name).
    - ``corr_first``, ``corr_second``: Pearson of each single with the double; ``corr_sum``:
      Pearson of ``delta_A + delta_B`` with the double; ``corr_first_second``: Spearman of the two
      singles (paper: same names).

    ``n_genes`` is the number of genes the model was fitted on. Correlations of a constant vector
    are ``nan``.
    """

    ts_coef_first: float
    ts_coef_second: float
    coef_first: float
    coef_second: float
    ts_norm: float
    ts_norm2: float
    coef_norm: float
    coef_norm2: float
    ts_ratio: float
    ts_difference: float
    abs_log_ts_ratio: float
    score: float
    ts_score: float
    corr_fit: float
    ts_linear_dcor: float
    dcor: float
    dcor_first: float
    dcor_second: float
    dcor_ratio: float
    dcor_singles: float
    corr_first: float
    corr_second: float
    corr_sum: float
    corr_first_second: float
    n_genes: int

    @property
    def magnitude(self) -> float:
        """``sqrt(c_A² + c_B²)`` of the Theil–Sen fit (the paper's ``ts_norm2``)."""
        return self.ts_norm2

    @property
    def dominance(self) -> float:
        """``|log10(|c_A| / |c_B|)|`` (the paper's ``abs_log_ts_ratio``)."""
        return self.abs_log_ts_ratio

    @property
    def model_fit(self) -> float:
        """Pearson of fitted and observed ``delta_AB`` (the paper's ``corr_fit``)."""
        return self.corr_fit

    @property
    def similarity(self) -> float:
        """dcor of ``[delta_A, delta_B]`` with ``delta_AB`` (the paper's ``dcor``)."""
        return self.dcor

    @property
    def equality_of_contribution(self) -> float:
        """``min/max`` of ``dcor_first`` and ``dcor_second`` (``dcor_ratio``)."""
        return self.dcor_ratio

    @property
    def ts_coef(self) -> tuple[float, float]:
        """``(c_A, c_B)`` by Theil–Sen."""
        return (self.ts_coef_first, self.ts_coef_second)

    @property
    def ls_coef(self) -> tuple[float, float]:
        """``(c_A, c_B)`` by least squares."""
        return (self.coef_first, self.coef_second)

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


GI_SCORE_COLUMNS: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(GIScores) if f.name != "n_genes"
)


# --- numerics --------------------------------------------------------------------------------


def _as_columns(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x[:, None] if x.ndim == 1 else x  # (G, d)


def _distance_covariances(variables: Sequence[np.ndarray]) -> np.ndarray:
    """Squared (biased) distance covariances of every pair of variables, ``(K, K)``.

    Each variable is ``(G,)`` or ``(G, d)``. Uses ``dCov²_n(x, y) = S1 + S2 - 2·S3`` with
    ``S1 = mean(a_ij b_ij)``, ``S2 = mean(a)·mean(b)`` and ``S3 = mean_i(mean_j a_ij · mean_j b_ij)``
    (Székely et al. 2007), accumulated over row blocks so the ``G × G`` matrices never exist.
    """
    columns = [_as_columns(v) for v in variables]
    n = columns[0].shape[0]
    k = len(columns)
    cross = np.zeros((k, k))  # (K, K) sum_ij a_ij b_ij
    row_means = np.zeros((k, n))  # (K, G)
    step = max(1, _CHUNK_ENTRIES // n)
    for start in range(0, n, step):
        stop = min(n, start + step)
        blocks = np.stack(
            [cdist(x[start:stop], x) for x in columns]
        )  # (K, c, G) pairwise distances of the block's rows to every row
        row_means[:, start:stop] = blocks.mean(axis=2)
        flat = blocks.reshape(k, -1)  # (K, c*G)
        cross += flat @ flat.T
    grand = row_means.mean(axis=1)  # (K,)
    dcov2 = cross / n**2 + np.outer(grand, grand) - 2.0 * (row_means @ row_means.T) / n
    return np.maximum(dcov2, 0.0)  # rounding can leave tiny negatives


def _dcor_from_dcov(dcov2: np.ndarray, i: int, j: int) -> float:
    denominator = math.sqrt(dcov2[i, i] * dcov2[j, j])
    if not denominator > 0.0 or not math.isfinite(dcov2[i, j]):
        return math.nan  # a constant (or nan) variable: distance correlation is undefined
    return math.sqrt(min(1.0, dcov2[i, j] / denominator))


def distance_correlation(x: np.ndarray, y: np.ndarray) -> float:
    """Distance correlation (Székely et al. 2007; biased V-statistic) of ``x`` and ``y``.

    ``x``, ``y``: ``(G,)`` or ``(G, d)`` with the same number of rows ``G``. 0 for independence in
    the limit, 1 when one is a similarity transform of the other; ``nan`` when either is constant.
    Matches ``dcor.distance_correlation``. Memory ``O(G)`` per row block, time ``O(G²)``.
    """
    x, y = _as_columns(x), _as_columns(y)
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise GIError(f"x and y need the same number of rows, got shapes {x.shape} and {y.shape}")
    if x.shape[0] < 2:
        raise GIError(f"distance correlation needs at least 2 observations, got {x.shape[0]}")
    return _dcor_from_dcov(_distance_covariances([x, y]), 0, 1)


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    x = x - x.mean()
    y = y - y.mean()
    denominator = math.sqrt(float(x @ x) * float(y @ y))
    if denominator <= 0.0:
        return math.nan
    return float(np.clip((x @ y) / denominator, -1.0, 1.0))


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    return _pearson(rankdata(x), rankdata(y))


def _r2(y: np.ndarray, fitted: np.ndarray) -> float:
    total = float(((y - y.mean()) ** 2).sum())
    if total <= 0.0:
        return math.nan
    return 1.0 - float(((y - fitted) ** 2).sum()) / total


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator != 0.0 else math.nan


def _abs_log_ratio(first: float, second: float) -> float:
    a, b = abs(first), abs(second)
    if a == 0.0 and b == 0.0:
        return math.nan
    if a == 0.0 or b == 0.0:
        return math.inf  # one single explains the double entirely
    return abs(math.log10(a / b))


def _min_max_ratio(first: float, second: float) -> float:
    high = max(first, second)
    return min(first, second) / high if high > 0.0 else math.nan


def _gene_vector(values: np.ndarray, name: str) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1:
        raise GIError(f"{name} must be a 1-D vector over genes, got shape {values.shape}")
    if not np.isfinite(values).all():
        raise GIError(f"{name} contains nan or inf; pass finite mean expression changes")
    return values


def fit_gi(
    delta_a: np.ndarray,
    delta_b: np.ndarray,
    delta_ab: np.ndarray,
    *,
    random_state: int = 0,
    max_subpopulation: int = 10_000,
    max_iter: int = 1000,
) -> GIScores:
    """Fit Norman's model ``delta_AB ≈ c_A·delta_A + c_B·delta_B`` and summarise it.

    ``delta_a``, ``delta_b``, ``delta_ab``: ``(G,)`` mean expression changes (vs control) of the
    singles A, B and of the double A+B over the same genes. Theil–Sen settings are passed to
    ``sklearn.linear_model.TheilSenRegressor(fit_intercept=False, ...)``; the paper used
    ``random_state=1000, max_subpopulation=1e5``. See :class:`GIScores` for every field.
    """
    delta_a = _gene_vector(delta_a, "delta_a")
    delta_b = _gene_vector(delta_b, "delta_b")
    delta_ab = _gene_vector(delta_ab, "delta_ab")
    shapes = {delta_a.shape, delta_b.shape, delta_ab.shape}
    if len(shapes) != 1:
        raise GIError(
            "delta_a, delta_b and delta_ab must cover the same genes, got shapes "
            f"{delta_a.shape}, {delta_b.shape} and {delta_ab.shape}"
        )
    n_genes = delta_a.shape[0]
    if n_genes < 3:
        raise GIError(f"the GI model needs at least 3 genes, got {n_genes}")

    singles = np.column_stack([delta_a, delta_b])  # (G, 2)
    ls_coef = np.linalg.lstsq(singles, delta_ab, rcond=None)[0]  # (2,)
    ls_fitted = singles @ ls_coef  # (G,)
    # A gene unchanged in all three conditions fits any coefficients; left in, the degenerate
    # 2-gene subsets it forms pull the Theil–Sen spatial median towards 0 (sparse data).
    informative = (singles != 0.0).any(axis=1) | (delta_ab != 0.0)  # (G,)
    if informative.sum() >= 3:
        theil_sen = TheilSenRegressor(
            fit_intercept=False,
            random_state=random_state,
            max_subpopulation=max_subpopulation,
            max_iter=max_iter,
        ).fit(singles[informative], delta_ab[informative])
        ts_coef = theil_sen.coef_  # (2,)
    else:
        logger.warning(
            "GI fit: only %d gene(s) change in A, B or A+B; Theil–Sen scores are nan",
            int(informative.sum()),
        )
        ts_coef = np.full(2, np.nan)
    ts_fitted = singles @ ts_coef  # (G,)

    # One pass over the gene pairs for every distance correlation we need.
    dcov2 = _distance_covariances([delta_a, delta_b, delta_ab, singles, ts_fitted])
    a, b, ab, both, fit = range(5)
    dcor_first = _dcor_from_dcov(dcov2, a, ab)
    dcor_second = _dcor_from_dcov(dcov2, b, ab)

    c_a, c_b = float(ts_coef[0]), float(ts_coef[1])
    l_a, l_b = float(ls_coef[0]), float(ls_coef[1])
    return GIScores(
        ts_coef_first=c_a,
        ts_coef_second=c_b,
        coef_first=l_a,
        coef_second=l_b,
        ts_norm=(abs(c_a) + abs(c_b)) / 2.0,
        ts_norm2=math.hypot(c_a, c_b),
        coef_norm=(abs(l_a) + abs(l_b)) / 2.0,
        coef_norm2=math.hypot(l_a, l_b),
        ts_ratio=_ratio(c_a, c_b),
        ts_difference=c_a - c_b,
        abs_log_ts_ratio=_abs_log_ratio(c_a, c_b),
        score=_r2(delta_ab, ls_fitted),
        ts_score=_r2(delta_ab, ts_fitted),
        corr_fit=_pearson(ls_fitted, delta_ab),
        ts_linear_dcor=_dcor_from_dcov(dcov2, fit, ab),
        dcor=_dcor_from_dcov(dcov2, both, ab),
        dcor_first=dcor_first,
        dcor_second=dcor_second,
        dcor_ratio=_min_max_ratio(dcor_first, dcor_second),
        dcor_singles=_dcor_from_dcov(dcov2, a, b),
        corr_first=_pearson(delta_a, delta_ab),
        corr_second=_pearson(delta_b, delta_ab),
        corr_sum=_pearson(delta_a + delta_b, delta_ab),
        corr_first_second=_spearman(delta_a, delta_b),
        n_genes=n_genes,
    )


# --- tables ----------------------------------------------------------------------------------


def _conditions_of(labels: Iterable[object]) -> dict[frozenset[str], object]:
    """Parse row labels into conditions; two labels naming the same condition is an error."""
    conditions: dict[frozenset[str], object] = {}
    for label in labels:
        try:
            condition = parse_condition(label)
        except ConditionError as error:
            raise GIError(f"deltas has a row label that is not a condition: {error}") from error
        if condition in conditions:
            raise GIError(
                f"deltas rows {conditions[condition]!r} and {label!r} are the same condition "
                f"{format_condition(condition)!r}; keep one row per condition"
            )
        conditions[condition] = label
    return conditions


def _fit_genes(
    deltas: pd.DataFrame, gene_subset: Iterable[str] | None, excluded: set[str]
) -> list[str]:
    genes = list(deltas.columns)
    if gene_subset is not None:
        wanted = list(dict.fromkeys(gene_subset))
        missing = [gene for gene in wanted if gene not in set(genes)]
        if missing:
            raise KeyError(
                f"gene_subset names {len(missing)} gene(s) that are not columns of deltas, "
                f"e.g. {missing[:5]}"
            )
        genes = wanted
    return [gene for gene in genes if gene not in excluded]


def gi_table(
    deltas: pd.DataFrame,
    doubles: Iterable[str] | None = None,
    gene_subset: Iterable[str] | None = None,
    *,
    exclude_targets: bool = True,
    random_state: int = 0,
    max_subpopulation: int = 10_000,
) -> pd.DataFrame:
    """GI scores of every double whose two singles are rows of ``deltas`` (one row per double).

    ``deltas``: conditions × genes mean expression changes vs control; rows are condition labels
    (``"A"``, ``"A+ctrl"``, ``"A+B"``, ``"B+A"``; control rows are ignored). ``doubles``: labels of
    the doubles to score (default: every two-gene row). ``gene_subset``: genes to fit on (e.g.
    highly variable or top-DE genes; default: all columns). ``exclude_targets``: drop every
    perturbed gene of the table from the fit, as the paper did (their own induction dominates
    the deltas). Genes whose delta is exactly 0 in every row (unexpressed) are dropped too.
    Doubles missing a single are skipped and logged.

    Returns a DataFrame indexed by the canonical name ``"A+B"`` (``index.name == "condition"``)
    with ``gene_first`` (A, alphabetically first), ``gene_second``, ``n_genes`` and
    :data:`GI_SCORE_COLUMNS`; ``attrs["gi"]`` records how it was made and what was skipped.
    """
    if not isinstance(deltas, pd.DataFrame):
        raise GIError(f"deltas must be a pandas DataFrame (conditions × genes), got {type(deltas)}")
    conditions = _conditions_of(deltas.index)
    if doubles is None:
        wanted = [condition for condition in conditions if len(condition) == 2]
    else:
        wanted = []
        for label in doubles:
            condition = parse_condition(label)
            if len(condition) != 2:
                raise GIError(f"{label!r} is not a double (two genes); GI scores need A+B")
            if condition not in conditions:
                raise KeyError(f"double {label!r} is not a row of deltas")
            wanted.append(condition)
    wanted = sorted(dict.fromkeys(wanted), key=format_condition)

    perturbed = set().union(*conditions) if conditions else set()
    excluded = perturbed if exclude_targets else set()
    genes = _fit_genes(deltas, gene_subset, excluded)
    # Genes that change in no condition at all (unexpressed in the screen) only dilute the scores.
    unchanged = (deltas.loc[:, genes] == 0.0).all(axis=0)
    genes = [gene for gene, flat in zip(genes, unchanged, strict=True) if not flat]
    if len(genes) < 3:
        raise GIError(
            f"only {len(genes)} gene(s) left to fit after gene_subset, exclude_targets and "
            "dropping genes unchanged in every condition; the GI model needs at least 3"
        )
    values = deltas.loc[:, genes]

    def row(condition: frozenset[str]) -> np.ndarray:
        vector = values.loc[conditions[condition]].to_numpy(dtype=np.float64)  # (G,)
        if not np.isfinite(vector).all():
            raise GIError(
                f"deltas row {conditions[condition]!r} has nan or inf on the fitted genes; "
                "drop the row or the genes (gene_subset)"
            )
        return vector

    records, skipped = [], []
    for condition in wanted:
        first, second = sorted(condition)
        single_a, single_b = frozenset([first]), frozenset([second])
        if single_a not in conditions or single_b not in conditions:
            skipped.append(format_condition(condition))
            continue
        scores = fit_gi(
            row(single_a),
            row(single_b),
            row(condition),
            random_state=random_state,
            max_subpopulation=max_subpopulation,
        )
        records.append(
            {
                "condition": format_condition(condition),
                "gene_first": first,
                "gene_second": second,
                **scores.to_dict(),
            }
        )
    if skipped:
        logger.warning(
            "GI scores: skipped %d double(s) without both singles in deltas: %s",
            len(skipped),
            ", ".join(skipped),
        )
    columns = ["gene_first", "gene_second", "n_genes", *GI_SCORE_COLUMNS]
    table = pd.DataFrame.from_records(records, columns=["condition", *columns])
    table = table.set_index("condition")
    table["n_genes"] = table["n_genes"].astype(int)
    table.attrs["gi"] = {
        "model": "Norman et al. 2019: delta_AB ~ c_A*delta_A + c_B*delta_B, no intercept",
        "n_genes": len(genes),
        "gene_subset": gene_subset is not None,
        "exclude_targets": exclude_targets,
        "n_excluded_targets": len(excluded & set(deltas.columns)),
        "n_unchanged_genes_dropped": int(unchanged.sum()),
        "random_state": random_state,
        "max_subpopulation": max_subpopulation,
        "skipped": skipped,
    }
    return table


# --- comparisons -----------------------------------------------------------------------------


def _orient_like(table: pd.DataFrame, target: pd.DataFrame) -> pd.DataFrame:
    """Rows of ``table`` re-oriented so that ``gene_first`` agrees with ``target``'s.

    Swaps the first/second columns, inverts ``ts_ratio`` and negates ``ts_difference`` on rows
    whose first gene differs. Tables without ``gene_first`` are returned unchanged.
    """
    if "gene_first" not in table.columns or "gene_first" not in target.columns:
        return table
    shared = table.index.intersection(target.index)
    flip = shared[
        table.loc[shared, "gene_first"].to_numpy() != target.loc[shared, "gene_first"].to_numpy()
    ]
    if len(flip) == 0:
        return table
    oriented = table.copy()
    for first, second in (*_FIRST_SECOND_PAIRS, ("gene_first", "gene_second")):
        if first in oriented.columns and second in oriented.columns:
            oriented.loc[flip, [first, second]] = table.loc[flip, [second, first]].to_numpy()
    for column in _RECIPROCAL_ON_SWAP:
        if column in oriented.columns:
            with np.errstate(divide="ignore"):
                ratio = table.loc[flip, column].to_numpy(dtype=np.float64)
                oriented.loc[flip, column] = np.where(ratio != 0.0, 1.0 / ratio, np.nan)
    for column in _NEGATED_ON_SWAP:
        if column in oriented.columns:
            oriented.loc[flip, column] = -table.loc[flip, column]
    return oriented


def compare_gi(
    predicted: pd.DataFrame,
    real: pd.DataFrame,
    score_columns: Sequence[str] = DEFAULT_COMPARE_SCORES,
) -> pd.DataFrame:
    """Agreement across doubles of GI scores computed from predicted and from real deltas.

    ``predicted``, ``real``: tables indexed by double (as from :func:`gi_table`). For each score,
    Pearson and Spearman correlation over the doubles present in both with finite values in both;
    ``nan`` with fewer than 3 such doubles or a constant score. Returns one row per score with
    :data:`COMPARISON_COLUMNS`. Orientation-dependent scores (``*_first``/``*_second``) are
    aligned on ``gene_first`` when both tables have it.
    """
    score_columns = list(score_columns)
    for name, table in (("predicted", predicted), ("real", real)):
        missing = [column for column in score_columns if column not in table.columns]
        if missing:
            raise KeyError(f"{name} lacks score column(s) {missing}; available: {list(table)}")
    real = _orient_like(real, predicted)
    shared = predicted.index.intersection(real.index)
    rows = []
    for column in score_columns:
        x = predicted.loc[shared, column].to_numpy(dtype=np.float64)  # (D,)
        y = real.loc[shared, column].to_numpy(dtype=np.float64)  # (D,)
        usable = np.isfinite(x) & np.isfinite(y)
        x, y = x[usable], y[usable]
        enough = x.size >= 3
        rows.append(
            {
                "score": column,
                "pearson": _pearson(x, y) if enough else math.nan,
                "spearman": _spearman(x, y) if enough else math.nan,
                "n_doubles": int(x.size),
            }
        )
    return pd.DataFrame(rows, columns=list(COMPARISON_COLUMNS))


def _reference_path(data_dir: str | Path) -> Path:
    data_dir = Path(data_dir)
    candidates = (
        [data_dir]
        if data_dir.suffix == ".csv"
        else [
            data_dir / NORMAN_REFERENCE_FILE,
            data_dir / _NORMAN_REFERENCE_FOLDER / NORMAN_REFERENCE_FILE,
        ]
    )
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"Norman 2019 GI table not found: looked for {', '.join(map(str, candidates))}. "
        "It is regr_fits_final.csv of github.com/thomasmaxwellnorman/Perturbseq_GI "
        "(data_sharing/); pass the folder holding it"
    )


def load_norman_reference(data_dir: str | Path) -> pd.DataFrame:
    """The paper's published GI model fits (125 doubles), indexed by canonical ``"A+B"``.

    ``data_dir``: the shared data folder, its ``norman2019_metadata/`` subfolder, or the CSV
    itself. Keeps ``gene_first``/``gene_second`` in the paper's order (its ``A_B`` label; not
    always alphabetical — :func:`compare_with_reference` re-orients) and the columns that match
    :data:`GI_SCORE_COLUMNS`, adding ``dcor_ratio`` from ``dcor_first``/``dcor_second``.
    ``attrs["source"]`` names the file. The paper's ``ts_ratio``/``abs_log_ts_ratio`` hold 0
    where theirs were infinite.
    """
    path = _reference_path(data_dir)
    table = pd.read_csv(path, index_col=0)
    required = ["ts_coef_first", "ts_coef_second", "dcor_first", "dcor_second"]
    missing = [column for column in required if column not in table.columns]
    if missing:
        raise GIReferenceError(f"{path}: expected columns {missing} are missing")
    parser = ConditionParser(separator="_")
    firsts, seconds, names = [], [], []
    for label in table.index:
        genes = str(label).split("_")
        if len(genes) != 2:
            raise GIReferenceError(
                f"{path}: row {label!r} is not a double named 'A_B' (two genes joined by '_')"
            )
        try:
            names.append(format_condition(parse_condition(label, parser)))
        except ConditionError as error:
            raise GIReferenceError(f"{path}: row {label!r}: {error}") from error
        firsts.append(genes[0])
        seconds.append(genes[1])
    scores = [column for column in GI_SCORE_COLUMNS if column in table.columns]
    reference = table.loc[:, scores].astype(np.float64)
    reference.insert(0, "gene_second", seconds)
    reference.insert(0, "gene_first", firsts)
    reference.index = pd.Index(names, name="condition")
    if reference.index.has_duplicates:
        duplicated = sorted(set(reference.index[reference.index.duplicated()]))
        raise GIReferenceError(f"{path}: doubles listed twice (as A_B and B_A): {duplicated}")
    if "dcor_ratio" not in reference.columns:
        reference["dcor_ratio"] = [
            _min_max_ratio(a, b)
            for a, b in zip(reference["dcor_first"], reference["dcor_second"], strict=True)
        ]
    reference.attrs["source"] = str(path)
    return reference


def compare_with_reference(
    ours: pd.DataFrame,
    reference: pd.DataFrame,
    score_columns: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Correlate our GI scores with the published ones over the doubles both tables hold.

    ``ours``: from :func:`gi_table`; ``reference``: from :func:`load_norman_reference`. Rows whose
    first gene differs between the tables are re-oriented first (coefficients and
    ``*_first``/``*_second`` swapped, ``ts_ratio`` inverted). ``score_columns`` defaults to every
    score both tables have. Returns :func:`compare_gi`'s table; ``attrs["n_overlap"]`` is the
    number of shared doubles and ``attrs["overlap"]`` their names.
    """
    if score_columns is None:
        score_columns = [
            column
            for column in GI_SCORE_COLUMNS
            if column in ours.columns and column in reference.columns
        ]
    overlap = ours.index.intersection(reference.index)
    if len(overlap) == 0:
        logger.warning(
            "GI reference comparison: none of the %d doubles is in the reference", len(ours)
        )
    comparison = compare_gi(ours, reference, score_columns)
    comparison.attrs["n_overlap"] = len(overlap)
    comparison.attrs["overlap"] = sorted(overlap)
    return comparison
