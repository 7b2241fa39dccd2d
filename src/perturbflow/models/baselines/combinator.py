"""A learned combinator: how two single responses combine, learned per gene from training doubles.

Norman et al. (Science 2019) model a double as ``δ_AB ≈ c_A δ_A + c_B δ_B`` (one pair of
coefficients per double). The combinator generalises that to a single regressor pooled over all
training doubles × genes: it predicts ``δ_AB[g]`` from features of ``δ_A[g]`` and ``δ_B[g]`` that
are symmetric in A and B (:func:`pair_features`). It is the bar a deep model must clear on doubles:
it knows nothing of gene programs, only how singles combine in this screen.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.linear_model import Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from perturbflow.data.conditions import parse_condition
from perturbflow.models.base import register_model
from perturbflow.models.baselines.mean_shift import MeanShiftConfig, MeanShiftModel

logger = logging.getLogger(__name__)

REGRESSORS = ("boosting", "linear")

# Columns of :func:`pair_features`, in order.
FEATURES = (
    "sum",  # δA[g] + δB[g]
    "product",  # δA[g] · δB[g]
    "min",  # min(δA[g], δB[g])
    "max",  # max(δA[g], δB[g])
    "abs_sum",  # |δA[g]| + |δB[g]|
    "control_mean",  # the gene's control level (a knocked-out gene cannot fall below zero)
    "is_target",  # 1 if g is itself perturbed in the combination
    "own",  # if g is perturbed: the delta at g of the side that perturbs it, else 0
    "partner",  # if g is perturbed: the delta at g of the other side, else 0
    "rms_sum",  # RMS over genes of δA plus that of δB (whole-response magnitude)
    "rms_product",
    "rms_min",
    "rms_max",
)


@dataclasses.dataclass(frozen=True)
class CombinatorConfig(MeanShiftConfig):
    """Options of the combinator.

    ``regressor``: ``"boosting"`` (histogram gradient boosting) or ``"linear"`` (ridge on the
    standardised features, the pooled Norman model). ``max_iter``, ``learning_rate``,
    ``max_leaf_nodes``, ``max_depth`` (``None``: unlimited), ``min_samples_leaf``: the boosting
    trees. ``alpha`` (≥ 0): the ridge penalty. ``min_doubles`` (≥ 1): with fewer training doubles
    the prediction is the plain sum of single deltas. ``max_rows`` (≥ 1): training rows (doubles ×
    genes) beyond this are subsampled with ``seed``.
    """

    regressor: str = "boosting"
    max_iter: int = 200
    learning_rate: float = 0.1
    max_leaf_nodes: int = 31
    max_depth: int | None = None
    min_samples_leaf: int = 20
    alpha: float = 1.0
    min_doubles: int = 3
    max_rows: int = 500_000

    def __post_init__(self) -> None:
        if self.regressor not in REGRESSORS:
            raise ValueError(
                f"regressor must be one of {', '.join(REGRESSORS)}; got {self.regressor!r}"
            )
        minimum = {
            "max_iter": 1,
            "max_leaf_nodes": 2,
            "min_samples_leaf": 1,
            "min_doubles": 1,
            "max_rows": 1,
        }
        for name, least in minimum.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be an integer ≥ {least}; got {value!r}")
        if self.max_depth is not None and (
            isinstance(self.max_depth, bool)
            or not isinstance(self.max_depth, int)
            or self.max_depth < 1
        ):
            raise ValueError(f"max_depth must be None or an integer ≥ 1; got {self.max_depth!r}")
        if not 0 < self.learning_rate <= 1:
            raise ValueError(f"learning_rate must be in (0, 1]; got {self.learning_rate!r}")
        if not self.alpha >= 0:
            raise ValueError(f"alpha must be ≥ 0; got {self.alpha!r}")


def pair_features(
    first: np.ndarray,
    first_targets: np.ndarray,
    second: np.ndarray,
    second_targets: np.ndarray,
    control_mean: np.ndarray,
) -> np.ndarray:
    """Features ``(G, len(FEATURES))`` of combining two responses, one row per gene.

    ``first``, ``second``: ``(G,)`` deltas of the two sides; ``first_targets``,
    ``second_targets``: ``(G,)`` boolean masks of the genes each side perturbs (disjoint);
    ``control_mean``: ``(G,)``. Every feature is unchanged when the two sides are swapped, so
    ``A+B`` and ``B+A`` get the same prediction. The one function used by fit and predict.
    """
    is_target = first_targets | second_targets  # (G,)
    own = np.where(first_targets, first, np.where(second_targets, second, 0.0))  # (G,)
    partner = np.where(first_targets, second, np.where(second_targets, first, 0.0))  # (G,)
    rms_first = np.sqrt(np.mean(first**2))
    rms_second = np.sqrt(np.mean(second**2))
    per_double = [
        rms_first + rms_second,
        rms_first * rms_second,
        min(rms_first, rms_second),
        max(rms_first, rms_second),
    ]
    columns = [
        first + second,
        first * second,
        np.minimum(first, second),
        np.maximum(first, second),
        np.abs(first) + np.abs(second),
        control_mean,
        is_target.astype(float),
        own,
        partner,
        *(np.full(len(first), value) for value in per_double),
    ]
    return np.column_stack(columns)  # (G, F)


@register_model("combinator")
class Combinator(MeanShiftModel):
    """``δ(A+B)[g] = f(features of δ(A)[g], δ(B)[g])`` with ``f`` learned on training doubles.

    One regressor (``config.regressor``) is fitted on all training doubles whose two singles are
    in training, one row per (double, gene), target the double's observed delta. Prediction:

    * a single gene: its training delta; a gene without a training single takes the mean
      training single delta (as in ``additive``; logged once per prediction call);
    * a double: the regressor on its two single deltas — also for training doubles, so every
      double is predicted the same way;
    * three or more genes: folded pairwise in sorted gene order, ``f(f(A, B), C)``, the
      combined side counting all its genes as targets;
    * fewer than ``min_doubles`` training doubles (e.g. an unseen-single split): the plain sum
      of single deltas, exactly ``additive`` (logged).
    """

    config_class = CombinatorConfig

    def _fit(self, dataset, train) -> None:
        self.single_deltas_, self.mean_single_delta_ = self._single_deltas()
        self._gene_position = {gene: i for i, gene in enumerate(self.genes_)}
        doubles = [
            name
            for name in self.train_deltas_.index
            if len(genes := parse_condition(name)) == 2 and genes <= set(self.single_deltas_)
        ]
        self.regressor_ = None
        if len(doubles) < self.config.min_doubles:
            logger.info(
                "combinator: %d training double(s) with both singles seen (min_doubles=%d); "
                "predicting the sum of single deltas (additive)",
                len(doubles),
                self.config.min_doubles,
            )
            return
        features = np.vstack(  # (D·G, F)
            [
                pair_features(*self._side(a), *self._side(b), self.control_mean_)
                for a, b in (sorted(parse_condition(name)) for name in doubles)
            ]
        )
        target = self.train_deltas_.loc[doubles].to_numpy().ravel()  # (D·G,) row order of features
        if len(target) > self.config.max_rows:
            rng = np.random.default_rng(self.config.seed)
            keep = np.sort(rng.choice(len(target), self.config.max_rows, replace=False))
            features, target = features[keep], target[keep]
        self.regressor_ = self._make_regressor()
        # One OpenMP thread: boosting sums gradients in parallel, and a different thread count
        # changes the rounding; a checkpoint refitted on another machine must predict the same.
        with threadpool_limits(limits=1, user_api="openmp"):
            self.regressor_.fit(features, target)
        logger.info(
            "combinator: fitted %s on %d training doubles (%d rows)",
            self.config.regressor,
            len(doubles),
            len(target),
        )

    def _make_regressor(self):
        config = self.config
        if config.regressor == "linear":
            return make_pipeline(StandardScaler(), Ridge(alpha=config.alpha))
        return HistGradientBoostingRegressor(
            max_iter=config.max_iter,
            learning_rate=config.learning_rate,
            max_leaf_nodes=config.max_leaf_nodes,
            max_depth=config.max_depth,
            min_samples_leaf=config.min_samples_leaf,
            early_stopping=False,
            random_state=config.seed,
        )

    def _side(self, gene: str, hidden: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """A single gene's delta ``(G,)`` (or the fallback) and the mask of its gene ``(G,)``.

        ``hidden`` treats a seen gene as never perturbed: the mean of the *other* singles.
        """
        mask = np.zeros(len(self.genes_), dtype=bool)
        if gene in self._gene_position:
            mask[self._gene_position[gene]] = True
        if hidden and gene in self.single_deltas_:
            n = len(self.single_deltas_)
            if n < 2:
                return np.zeros(len(self.genes_)), mask
            return (n * self.mean_single_delta_ - self.single_deltas_[gene]) / (n - 1), mask
        return self.single_deltas_.get(gene, self.mean_single_delta_), mask

    def shifts(
        self, conditions: list[str], hidden: list[frozenset[str]] | None = None
    ) -> np.ndarray:
        """Predicted deltas ``(C, G)``; ``hidden[i]`` names genes of condition ``i`` to treat as
        never perturbed in training (their single delta replaced by the fallback)."""
        self._check_fitted()
        hidden = hidden if hidden is not None else [frozenset()] * len(conditions)
        with threadpool_limits(limits=1, user_api="openmp"):
            rows = [
                self._combine(sorted(parse_condition(name)), hide)
                for name, hide in zip(conditions, hidden, strict=True)
            ]
        return np.vstack(rows).astype(np.float32) if rows else np.zeros((0, len(self.genes_)))

    # Persistence: the regressor is not stored (checkpoints are arrays only, no pickle). It is
    # refitted in ``_set_state`` from the checkpoint's own training deltas and control mean, which
    # reproduces it exactly (deterministic fit, one thread, same seed).
    def _set_state(self, arrays) -> None:
        self._fit(None, None)

    def predict_delta(self, conditions):
        self._check_fitted()
        names = self._names(conditions)
        self._log_genes_without_single(names, "the mean single delta")
        # One thread: each call predicts G rows only, where OpenMP start-up costs more than it saves.
        with threadpool_limits(limits=1, user_api="openmp"):
            return super().predict_delta(names)

    def _delta(self, condition: frozenset[str], name: str) -> np.ndarray:
        return self._combine(sorted(condition), frozenset())

    def _combine(self, genes: list[str], hide: frozenset[str]) -> np.ndarray:
        if not genes:
            return np.zeros(len(self.genes_))
        if self.regressor_ is None:
            return np.sum([self._side(gene, gene in hide)[0] for gene in genes], axis=0)
        combined, combined_targets = self._side(genes[0], genes[0] in hide)
        for gene in genes[1:]:
            delta, targets = self._side(gene, gene in hide)
            rows = pair_features(combined, combined_targets, delta, targets, self.control_mean_)
            combined = self.regressor_.predict(rows)  # (G,)
            combined_targets = combined_targets | targets
        return combined
