"""``calibrated_additive``: the summed single deltas, scaled per category of condition.

For a condition ``S`` the shift is ``Σ_{g∈S} delta(g)`` in gene space, where ``delta(g)`` is the
mean expression change of gene ``g``'s training single. A gene without a training single gets the
mean single delta (``unseen="mean"``, the additive baseline's convention) or a ridge prediction
from its gene embedding (``unseen="ridge"``, GenePert-style, fitted on the seen singles; genes
without a vector still get the mean). scbig starts its flow from this estimator, so with a zero
velocity scbig predicts exactly its means; the benchmark shows it as a row of its own.

With ``calibrate=True`` the summed shift is scaled by a factor per *category* — the number of
genes in the condition and how many of them lack a training single — fitted by least squares on
the training conditions themselves: each seen single left out (the fallback must predict its
delta) for ``(1, 1)``, and each training combination with none, some or all of its genes hidden
for ``(k, h)``. Each training condition contributes its ``calibration_genes`` most changed genes
(0: all genes): on genes a condition leaves alone, the single deltas' measurement noise alone
would pull the scale towards zero (regression dilution). A hidden gene gets the fallback fitted
*without* it (the mean of the other singles, or the closed-form leave-one-out ridge prediction).
Summed log-expression deltas overshoot
combinations whose effects saturate or buffer each other, and two mean deltas overshoot a pair
of unseen genes; the scales correct both from training data alone. Categories with fewer than
``MIN_CALIBRATION`` training conditions keep the plain sum (scale 1).

With ``target_aware=True`` (needs ``var_names``) a perturbed gene's *own* expression is modelled
apart from its downstream effects. A knock-down or activation changes its target by about the
same amount in every screen condition, while the downstream programs buffer, saturate or
synergise. The fallback of a measured gene without a training single knows nothing about its
own knock-down, so its own column gets the mean *on-target residual* of the seen singles added:
each single's own change minus what its fallback, fitted without it, predicts there (the
single's own residual left out when a seen gene is hidden). The calibration also fits the
perturbed genes' own columns with a scale of their own per category (``target_scales``), next to
the downstream scale.

With ``propagate=True`` (the default; only with ``target_aware``) that residual also moves the
genes that co-vary with the perturbed gene across the training cells: a hidden or unseen gene
``g`` adds ``residual(g) · β_g``, where ``β_g[j] = cov(x_j, x_g) / var(x_g)`` regresses each gene
on ``g`` over the control and training cells (:func:`coupling_columns`): a first-order linear
response. A hidden seen gene's ``β_g`` leaves out the cells of every training condition that
perturbs it, so its calibration sees no more than an unseen gene would.

Guide-level data (``read(..., guide_key=)``): a guide without training cells falls back to the
mean delta of its gene's seen guides (and a seen guide, hidden for calibration, to that of its
siblings) before the mean-single fallback.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from perturbflow.data.conditions import CONTROL_NAME, parse_condition
from perturbflow.models.base import register_model
from perturbflow.models.baselines.context import ContextCalibration, fit_context_calibration
from perturbflow.models.baselines.mean_shift import MeanShiftConfig, MeanShiftModel, single_gene
from perturbflow.models.baselines.pooled import pooled_leverages, training_effects
from perturbflow.programs.priors import (
    check_embedding_spec,
    correlation_embedding,
    prior_gene_table,
    with_data_embedding,
)

logger = logging.getLogger(__name__)

UNSEEN_MODES = ("mean", "ridge")
# Least training conditions a category needs before its scale is fitted; bounds of a scale.
MIN_CALIBRATION = 3
MAX_SCALE = 2.0
# Combinations of more genes than this are not used to calibrate (2^k hiding patterns each).
_MAX_CALIBRATION_GENES = 4


RIDGE_ALPHAS = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0, float("inf"))


def loo_ridge_alpha(features: np.ndarray, targets: np.ndarray) -> float:
    """The ridge penalty with the least leave-one-gene-out error on the seen singles.

    ``features`` ``(S, d)`` and ``targets`` ``(S, G)`` are centred; ``inf`` means "predict the
    mean single delta", so a prior that does not predict held-out singles is shrunk away.
    Closed-form leave-one-out residuals ``e_i / (1 - h_ii)`` of ridge regression.
    """
    n = len(features)
    if n < 3:
        return float("inf")
    errors = {}
    for alpha in RIDGE_ALPHAS:
        if not np.isfinite(alpha):
            # Leaving gene i out moves the mean: its residual is scaled by n / (n - 1).
            errors[alpha] = float(np.mean((targets * n / (n - 1)) ** 2))
            continue
        gram = features.T @ features + alpha * np.eye(features.shape[1])  # (d, d)
        hat = features @ np.linalg.solve(gram, features.T)  # (S, S)
        residual = targets - hat @ targets  # (S, G)
        leverage = 1.0 - np.diag(hat) - 1.0 / n  # centring costs one more degree of freedom
        errors[alpha] = float(np.mean((residual / np.maximum(leverage, 1e-6)[:, None]) ** 2))
    return min(errors, key=errors.get)


# Penalties of the network map, relative to the mean squared norm of the centred shifts.
NETWORK_PENALTIES = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)


@dataclasses.dataclass(frozen=True)
class NetworkMap:
    """``r(s) = b + (s − s̄) Xᵀ A``: a combination's residual over its shift ``s``, in dual form.

    ``shift_mean`` ``(G,)`` is ``s̄``; ``basis`` ``(D, G)`` the centred training shifts ``X``;
    ``coef`` ``(D, G)`` the dual coefficients ``A``; ``intercept`` ``(G,)`` ``b``; ``penalty`` the
    relative ridge penalty chosen (``None``: the map predicts no residual); ``held_out`` ``(D, G)``
    each training combination's residual predicted without it (closed form). Dual form keeps the
    map at ``2 D G`` numbers where the primal ``G × G`` matrix would not fit for whole
    transcriptomes.
    """

    shift_mean: np.ndarray
    basis: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray
    penalty: float | None
    # (D, G): each training combination's residual as predicted by the map fitted without it.
    held_out: np.ndarray | None = None

    def __call__(self, shifts: np.ndarray) -> np.ndarray:
        """Residuals ``(C, G)`` of shifts ``(C, G)``."""
        if self.penalty is None:
            return np.zeros_like(shifts)
        return self.intercept + ((shifts - self.shift_mean) @ self.basis.T) @ self.coef


def fit_network_map(shifts: np.ndarray, residuals: np.ndarray) -> NetworkMap:
    """Ridge map from training combinations' shifts ``(D, G)`` to their residuals ``(D, G)``.

    The penalty (:data:`NETWORK_PENALTIES`, times the mean squared norm of the centred shifts) is
    the one with the least closed-form leave-one-combination-out error, ``e_i / (1 − h_ii)`` with
    the kernel hat matrix ``K (K + αI)⁻¹`` plus the intercept's ``1/D``. "No map" (residual 0) is
    a candidate too, so a map that does not predict held-out combinations is not used.
    """
    n, n_genes = shifts.shape
    none = NetworkMap(
        np.zeros(n_genes), np.zeros((0, n_genes)), np.zeros((0, n_genes)), np.zeros(n_genes), None
    )
    if n < 3:
        return none
    shifts = shifts.astype(np.float64)
    residuals = residuals.astype(np.float64)
    shift_mean, residual_mean = shifts.mean(axis=0), residuals.mean(axis=0)
    basis = shifts - shift_mean  # (D, G)
    centred = residuals - residual_mean  # (D, G)
    kernel = basis @ basis.T  # (D, D)
    scale = float(np.trace(kernel)) / n
    if scale <= 0:
        return none
    values, vectors = np.linalg.eigh(kernel)
    values = np.clip(values, 0.0, None)
    projected = vectors.T @ centred  # (D, G)
    best_error, best, best_loo = float(np.mean(residuals**2)), None, None  # "no map": zero
    for penalty in NETWORK_PENALTIES:
        shrink = values / (values + penalty * scale)  # (D,)
        fitted = vectors @ (shrink[:, None] * projected)  # (D, G)
        leverage = 1.0 - (vectors**2 @ shrink) - 1.0 / n  # (D,)
        loo = (centred - fitted) / np.maximum(leverage, 1e-6)[:, None]  # (D, G)
        error = float(np.mean(loo**2))
        if error < best_error:
            best_error, best, best_loo = error, penalty, loo
    if best is None:
        return none
    coef = vectors @ (projected / (values + best * scale)[:, None])  # (D, G)
    # A residual minus its leave-one-out error is its prediction without it.
    return NetworkMap(shift_mean, basis, coef, residual_mean, best, residuals - best_loo)


def coupling_columns(
    cells, genes: Sequence[str], columns: Sequence[str], leave_out: Mapping[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Regression slopes of every gene on each gene of ``columns`` over ``cells``.

    ``cells`` ``(N, G)`` (dense or sparse) are the training cells; ``columns`` the genes whose
    slopes are wanted; ``leave_out[g]`` a boolean ``(N,)`` mask of the cells to leave out of
    ``g``'s leave-out slopes (the cells of the training conditions that perturb ``g``). Returns
    ``(slopes, leave_out_slopes)``: gene → ``(G,)`` with ``β_g[j] = cov(x_j, x_g) / var(x_g)`` and
    ``β_g[g] = 0`` (a gene's own change is modelled apart); a gene that does not vary gets zeros.
    """
    index = {str(g): i for i, g in enumerate(genes)}
    wanted = [str(g) for g in columns if str(g) in index]
    if not wanted or cells.shape[0] < 2:
        return {}, {}
    cols = np.array([index[g] for g in wanted])
    n = cells.shape[0]
    total = np.asarray(cells.sum(axis=0), dtype=np.float64).ravel()  # (G,)
    gram = _array(cells.T @ cells[:, cols])  # (G, P)

    def slope(cross: np.ndarray, sums: np.ndarray, count: int, column: int) -> np.ndarray:
        mean = sums / count  # (G,)
        cov = cross / count - mean * mean[column]  # (G,)
        var = cov[column]
        if count < 2 or var <= 1e-8:
            return np.zeros(len(sums), np.float32)
        beta = cov / var
        beta[column] = 0.0
        return beta.astype(np.float32)

    slopes, held = {}, {}
    for k, gene in enumerate(wanted):
        column = cols[k]
        slopes[gene] = slope(gram[:, k], total, n, column)
        mask = leave_out.get(gene)
        if mask is None or not mask.any():
            continue
        out = cells[mask]  # (n_g, G)
        cross = gram[:, k] - _array(out.T @ out[:, [column]]).ravel()
        sums = total - np.asarray(out.sum(axis=0), dtype=np.float64).ravel()
        held[gene] = slope(cross, sums, n - int(mask.sum()), column)
    return slopes, held


def _array(matrix) -> np.ndarray:
    """A dense float64 copy of a dense or sparse product."""
    return np.asarray(matrix.toarray() if hasattr(matrix, "toarray") else matrix, np.float64)


class AdditiveShiftPrior:
    """Per-gene expression shifts from training singles, with a fallback for other genes."""

    def __init__(
        self,
        single_deltas: Mapping[str, np.ndarray],
        n_genes: int,
        prior: pd.DataFrame | None = None,
        unseen: str = "mean",
        alpha: float | None = None,
        combo_deltas: Mapping[str, np.ndarray] | None = None,
        calibrate: bool = False,
        var_names: Sequence[str] | None = None,
        target_aware: bool = False,
        guide_genes: Mapping[str, str] | None = None,
        calibration_genes: int = 0,
        coupling: Mapping[str, np.ndarray] | None = None,
        coupling_held_out: Mapping[str, np.ndarray] | None = None,
        network: bool = False,
        blend: Mapping[str, np.ndarray] | None = None,
        blend_share: float = 0.0,
        combination_effects: Mapping[str, np.ndarray] | None = None,
        own_deltas: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        if unseen not in UNSEEN_MODES:
            raise ValueError(f"unseen must be one of {UNSEEN_MODES}, got {unseen!r}")
        if var_names is not None and len(var_names) != n_genes:
            raise ValueError(f"var_names has {len(var_names)} names for {n_genes} genes")
        if target_aware and var_names is None:
            raise ValueError("target_aware needs var_names (which column is a perturbed gene)")
        if calibration_genes < 0:
            raise ValueError(f"calibration_genes must be non-negative, got {calibration_genes}")
        if coupling and not target_aware:
            raise ValueError("coupling propagates the on-target residual: it needs target_aware")
        self.calibration_genes = int(calibration_genes)
        # Slopes of every gene on a perturbed gene (all training cells; without its own cells).
        self.coupling = dict(coupling or {})
        self.coupling_held_out = dict(coupling_held_out or {})
        self.genes = sorted(single_deltas)
        # Genes without a training single whose effect the training combinations measure: used
        # instead of the fallback (and counted as measured) unless hidden.
        self.combination_effects = {
            g: np.asarray(d, np.float32)
            for g, d in (combination_effects or {}).items()
            if g not in single_deltas
        }
        self.deltas = (
            np.vstack([single_deltas[g] for g in self.genes]).astype(np.float32)
            if self.genes
            else np.zeros((0, n_genes), np.float32)
        )  # (S, G)
        self.mean_delta = (
            self.deltas.mean(axis=0) if self.genes else np.zeros(n_genes, np.float32)
        )  # (G,)
        # What a seen gene contributes itself (e.g. its shrunk delta); the fallbacks, averages
        # over many singles, are fitted on ``single_deltas``.
        own = own_deltas or {}
        self.own_deltas = (
            np.vstack([np.asarray(own.get(g, single_deltas[g])) for g in self.genes]).astype(
                np.float32
            )
            if self.genes
            else self.deltas
        )  # (S, G)
        self.prior = prior if prior is not None else pd.DataFrame(index=pd.Index([], dtype=str))
        self.unseen = unseen
        d = self.prior.shape[1]
        self.coef = np.zeros((d, n_genes), np.float32)  # (d, G)
        self.feature_mean = np.zeros(d, np.float32)  # (d,)
        covered = [g for g in self.genes if g in self.prior.index]
        self.alpha = float("inf")
        self._index = {g: i for i, g in enumerate(self.genes)}
        n = len(self.genes)
        # Fallback of each seen gene fitted without it: the mean of the other singles ...
        self.loo_deltas = (
            (n * self.mean_delta[None, :] - self.deltas) / (n - 1)
            if n > 1
            else np.zeros_like(self.deltas)
        ).astype(np.float32)  # (S, G)
        if unseen == "ridge" and covered and d:
            features = self.prior.loc[covered].to_numpy(np.float64)  # (S', d)
            targets = np.vstack([single_deltas[g] for g in covered]).astype(np.float64)
            self.feature_mean = features.mean(axis=0).astype(np.float32)
            centred = features - self.feature_mean
            residual = targets - self.mean_delta  # (S', G)
            self.alpha = alpha if alpha is not None else loo_ridge_alpha(centred, residual)
            if np.isfinite(self.alpha):
                gram = centred.T @ centred + self.alpha * np.eye(d)  # (d, d)
                self.coef = np.linalg.solve(gram, centred.T @ residual).astype(np.float32)
                # ... or its closed-form leave-one-out ridge prediction (see loo_ridge_alpha).
                hat = centred @ np.linalg.solve(gram, centred.T)  # (S', S')
                error = residual - hat @ residual  # (S', G)
                leverage = np.maximum(1.0 - np.diag(hat) - 1.0 / len(covered), 1e-6)  # (S',)
                rows = [self._index[g] for g in covered]
                self.loo_deltas[rows] = (targets - error / leverage[:, None]).astype(np.float32)
        # Guide level: a guide's fallback is the mean of its gene's other (seen) guides.
        self.siblings: dict[str, list[int]] = {}
        for guide, gene in (guide_genes or {}).items():
            self.siblings[guide] = [
                self._index[other]
                for other, same in guide_genes.items()
                if same == gene and other != guide and other in self._index
            ]
        for guide, rows in self.siblings.items():
            if rows and guide in self._index:
                self.loo_deltas[self._index[guide]] = self.deltas[rows].mean(axis=0)
        self.column = {str(g): i for i, g in enumerate(var_names)} if var_names is not None else {}
        self.target_aware = target_aware
        self.on_target = self._on_target_residuals()  # (S,)
        self.scales: dict[tuple[int, int], float] = {}
        self.target_scales: dict[tuple[int, int], float] = {}
        if calibrate:
            self.scales, self.target_scales = self._calibrate(combo_deltas or {})
        # Gene → pooled effect (``pooled_additive``); conditions of such genes move this share of
        # the way from the shift above to the sum of their pooled effects.
        self.blend = dict(blend or {})
        self.blend_share = float(blend_share)
        self.network: NetworkMap | None = None
        if network:
            self.network = self._fit_network(combo_deltas or {})

    def _fit_network(self, combo_deltas: Mapping[str, np.ndarray]) -> NetworkMap:
        """The map of how a combination departs from its (calibrated) shift, fitted on the
        training combinations whose genes all have a training single."""
        names = [
            name
            for name in sorted(combo_deltas)
            if len(parse_condition(name)) >= 2 and self.genes_all_seen(name)
        ]
        shifts = self._summed(names, [frozenset()] * len(names))  # (D, G)
        targets = np.vstack([combo_deltas[n] for n in names]) if names else shifts
        fitted = fit_network_map(shifts, targets - shifts)
        self._network_rows = {name: i for i, name in enumerate(names)}
        if fitted.penalty is None:
            logger.info(
                "calibrated_additive: network map not used (%d training combinations; no penalty "
                "beats predicting no residual on held-out combinations)",
                len(names),
            )
        else:
            logger.info(
                "calibrated_additive: network map fitted on %d training combinations "
                "(relative penalty %g)",
                len(names),
                fitted.penalty,
            )
        return fitted

    def _calibrate(
        self, combo_deltas: Mapping[str, np.ndarray]
    ) -> tuple[dict[tuple[int, int], float], dict[tuple[int, int], float]]:
        """Least-squares scales per ``(genes, unseen genes)`` category from training conditions.

        Returns the downstream scales and, when target-aware, the scales of the perturbed genes'
        own columns (the two are fitted on disjoint columns of the same conditions).
        """
        sums: dict[tuple[str, tuple[int, int]], list[float]] = {}

        def add(key: tuple[int, int], genes: list[str], shift: np.ndarray, target: np.ndarray):
            own = self._own_mask(genes)  # (G,)
            changed = self._changed_mask(target)  # (G,)
            parts = [("downstream", ~own), ("target", own)] if self.target_aware else []
            for part, mask in parts or [("downstream", np.ones_like(own))]:
                mask = mask & changed
                if not mask.any():
                    continue
                entry = sums.setdefault((part, key), [0.0, 0.0, 0.0])
                entry[0] += float(np.dot(shift[mask], target[mask]))
                entry[1] += float(np.dot(shift[mask], shift[mask]))
                entry[2] += 1

        for gene in self.genes:  # each seen single, predicted by the fallback without it
            add((1, 1), [gene], self.gene_delta(gene, hidden=True), self.deltas[self._index[gene]])
        for name, target in combo_deltas.items():
            genes = sorted(parse_condition(name))
            if not 2 <= len(genes) <= _MAX_CALIBRATION_GENES or not self._index.keys() >= set(
                genes
            ):
                continue
            for n_hidden in range(len(genes) + 1):
                for hide in itertools.combinations(genes, n_hidden):
                    shift = np.sum([self.gene_delta(g, g in hide) for g in genes], axis=0)
                    add((len(genes), n_hidden), genes, shift, np.asarray(target, np.float64))
        scales: dict[str, dict[tuple[int, int], float]] = {"downstream": {}, "target": {}}
        for (part, key), (cross, norm, count) in sorted(sums.items()):
            # A combination contributes one row per hiding pattern; count conditions, not rows.
            n_conditions = count / math.comb(*key)
            if n_conditions >= MIN_CALIBRATION and norm > 0:
                scales[part][key] = float(np.clip(cross / norm, 0.0, MAX_SCALE))
        for part, fitted in scales.items():
            if fitted:
                logger.info(
                    "calibrated_additive: %s scales by (genes, unseen genes): %s",
                    part,
                    ", ".join(f"{k}: {v:.2f}" for k, v in fitted.items()),
                )
        return scales["downstream"], scales["target"]

    def _changed_mask(self, target: np.ndarray) -> np.ndarray:
        """``(G,)`` the ``calibration_genes`` columns a training condition changes most (all if 0).

        Columns a condition leaves unchanged carry only the single deltas' measurement noise,
        which pulls a least-squares scale towards zero (regression dilution); the scale of how
        effects combine is read where the condition has an effect.
        """
        k = self.calibration_genes
        if k == 0 or k >= len(target):
            return np.ones(len(target), dtype=bool)
        mask = np.zeros(len(target), dtype=bool)
        mask[np.argpartition(-np.abs(target), k - 1)[:k]] = True
        return mask

    def _on_target_residuals(self) -> np.ndarray:
        """``(S,)`` what each seen single's fallback, fitted without it, misses of its own change.

        The on-target effect beyond the gene's generic response; ``nan`` where it is not measured.
        """
        return np.array(
            [
                self.deltas[i, self.column[g]] - self.loo_deltas[i, self.column[g]]
                if g in self.column
                else np.nan
                for i, g in enumerate(self.genes)
            ],
            dtype=np.float64,
        )

    def category(self, name: str, hide: frozenset[str] = frozenset()) -> tuple[int, int]:
        """``(genes, genes without a training single)`` of a condition; ``hide`` counts as without."""
        genes = parse_condition(name)
        return len(genes), sum(1 for g in genes if g in hide or not self.measured(g))

    def genes_all_seen(self, name: str) -> bool:
        """Whether every gene of ``name`` has a training single (where the network map applies)."""
        return self._index.keys() >= parse_condition(name)

    def scale_vector(self, name: str) -> np.ndarray:
        """``(G,)`` the calibration scale of each column of ``name``'s summed deltas: the
        category's downstream scale, its target scale on the perturbed genes' own columns."""
        genes = sorted(parse_condition(name))
        key = self.category(name)
        scales = np.full(len(self.mean_delta), self.scale(*key), np.float64)  # (G,)
        scales[self._own_mask(genes)] = self.target_scale(*key)
        return scales

    def measured(self, gene: str) -> bool:
        """Whether ``gene`` has an effect of its own: a training single or, with
        ``combination_effects``, training combinations that measure it."""
        return gene in self._index or gene in self.combination_effects

    def calibrated(self, name: str) -> bool:
        """Whether the shift of ``name`` is scaled by a calibrated (fitted) scale."""
        return self.category(name) in self.scales

    def _own_mask(self, genes: Sequence[str]) -> np.ndarray:
        """``(G,)`` mask of the columns of ``genes`` that are measured."""
        mask = np.zeros(len(self.mean_delta), dtype=bool)
        mask[[self.column[g] for g in genes if g in self.column]] = True
        return mask

    def scale(self, n_genes: int, n_unseen: int) -> float:
        """Calibrated scale of the summed shift of ``n_genes`` genes, ``n_unseen`` without singles."""
        return self.scales.get((n_genes, n_unseen), 1.0)

    def target_scale(self, n_genes: int, n_unseen: int) -> float:
        """Calibrated scale of the perturbed genes' own columns (the downstream one if unfitted)."""
        return self.target_scales.get((n_genes, n_unseen), self.scale(n_genes, n_unseen))

    def gene_delta(self, gene: str, hidden: bool = False) -> np.ndarray:
        """Expression shift ``(G,)`` of one gene; ``hidden`` treats it as never seen perturbed.

        A hidden *seen* gene gets the fallback fitted without its own single (no leakage). A gene
        without a single but with a combination effect takes that effect unless hidden.
        """
        if gene in self._index:
            index = self._index[gene]
            if not hidden:
                return self.own_deltas[index]
            delta = self.loo_deltas[index]
        elif gene in self.combination_effects and not hidden:
            return self.combination_effects[gene]
        elif self.siblings.get(gene):
            delta = self.deltas[self.siblings[gene]].mean(axis=0)
        elif self.unseen == "ridge" and gene in self.prior.index and self.prior.shape[1]:
            features = self.prior.loc[gene].to_numpy(np.float32) - self.feature_mean
            delta = features @ self.coef + self.mean_delta
        else:
            delta = self.mean_delta
        if self.target_aware and gene in self.column:
            own = self._on_target_residual(gene)
            if own is not None:
                delta = delta.copy()
                delta[self.column[gene]] += own
                slopes = (
                    self.coupling_held_out.get(gene)
                    if gene in self._index
                    else self.coupling.get(gene)
                )
                if slopes is not None:
                    delta += own * slopes
        return delta

    def _on_target_residual(self, gene: str) -> float | None:
        """Mean on-target residual of the other seen singles: added to ``gene``'s own column."""
        usable = np.isfinite(self.on_target)  # (S,)
        if gene in self._index:
            usable[self._index[gene]] = False  # leave the hidden gene's own change out
        if not usable.any():
            return None
        return float(self.on_target[usable].mean())

    def shifts(
        self,
        conditions: Sequence[str],
        hidden: Sequence[frozenset[str]] | None = None,
        cross_fit: bool = False,
    ) -> np.ndarray:
        """Summed (and, when calibrated, scaled) shifts ``(C, G)`` of condition names.

        ``hidden[i]`` names genes of condition ``i`` to treat as never seen perturbed. Control
        shifts by zero. With the network map, a combination whose genes all have a training
        single adds its learned residual; with ``cross_fit`` a combination the map was fitted on
        adds the residual predicted without it, as a held-out combination would.
        """
        hidden = hidden if hidden is not None else [frozenset()] * len(conditions)
        rows = self._summed(conditions, hidden)  # (C, G)
        if self.network is not None and len(rows):
            # Only where the map was fitted: combinations whose genes all have a training single.
            combos = np.array(
                [
                    len(parse_condition(name)) >= 2 and self.category(name, hide)[1] == 0
                    for name, hide in zip(conditions, hidden, strict=True)
                ]
            )
            residual = np.zeros_like(rows)
            if combos.any():
                residual[combos] = self.network(rows[combos])
            if cross_fit and self.network.held_out is not None:
                for i, (name, hide) in enumerate(zip(conditions, hidden, strict=True)):
                    row = self._network_rows.get(name)
                    if row is not None and not hide:
                        residual[i] = self.network.held_out[row]
            rows = rows + residual.astype(np.float32)
        if self.blend_share > 0:
            rows = rows.copy()
            for i, (name, hide) in enumerate(zip(conditions, hidden, strict=True)):
                genes = parse_condition(name)
                if genes and not genes & hide and genes <= self.blend.keys():
                    pooled = np.sum([self.blend[g] for g in genes], axis=0)  # (G,)
                    rows[i] = (1.0 - self.blend_share) * rows[i] + self.blend_share * pooled
        return rows

    def _summed(self, conditions: Sequence[str], hidden: Sequence[frozenset[str]]) -> np.ndarray:
        """The summed, scaled shifts ``(C, G)`` before the network map."""
        rows = []
        for name, hide in zip(conditions, hidden, strict=True):
            genes = sorted(parse_condition(name))
            if not genes:
                rows.append(np.zeros_like(self.mean_delta))
                continue
            key = self.category(name, hide)
            summed = np.sum([self.gene_delta(g, g in hide) for g in genes], axis=0)
            scaled = self.scale(*key) * summed
            own = self._own_mask(genes)
            scaled[own] = self.target_scale(*key) * summed[own]
            rows.append(scaled)
        return np.vstack(rows).astype(np.float32) if rows else np.zeros((0, len(self.mean_delta)))


@dataclasses.dataclass(frozen=True)
class CalibratedAdditiveConfig(MeanShiftConfig):
    """Options of :class:`CalibratedAdditive` (see the module docstring).

    ``unseen``: fallback of a gene without a training single — ``mean``, ``ridge`` or ``auto``
    (``ridge`` with a prior ``embedding``, ``mean`` with ``"data"``). ``embedding``: ``"data"``
    (correlation embedding of the training cells, ``n_components`` wide), a registered prior
    source (``go``, ``ppi``, ``text``, …) or a table path, used next to the data embedding; the
    name ``calibrated_additive[go]`` sets it. ``priors``: the data folder holding ``priors/``.
    ``context``: on a context split (``cross_cell_line``, ``cross_context``), calibrate the
    transferred change to the target context (:mod:`perturbflow.models.baselines.context`),
    fitted on each perturbation's ``context_genes`` largest changes (0: all genes).
    ``calibration_genes``: each training condition's most changed genes that the category scales
    are fitted on (0: all genes). ``propagate``: the on-target residual of a gene without a
    training single also moves the genes that co-vary with it (only with ``target_aware``, whose
    residual it spreads). ``max_fit_cells``: the gene–gene statistics (co-variation slopes, data
    embedding) use at most this many training cells, a seeded sample of them (all cells below
    it), so fit time stays flat in the number of cells; condition means always use every cell.
    ``combination_weight``: above 0, a seen gene contributes its effect fitted jointly on the
    training singles and combinations (``pooled_additive``, combinations weighted by this times
    their cells), which carries less of one single's sampling noise, instead of its single's
    delta; the fallbacks of unseen genes still average the singles. ``pooled_if_better``: use
    them only when they predict the training combinations whose genes all have a training single
    better, held out one at a time (closed form) and scored on each one's ``calibration_genes``
    most changed genes, than the singles' deltas do (with ``network``, plus the map fitted
    without the combination, when its leave-one-out choice is a map). Without it, pooled effects are
    always used, but with ``network`` only when the map's choice is "no map": a chosen map is a
    learned departure of the combinations from the singles' sum, which pooled effects would
    absorb into the singles.
    ``pooled_share``: a condition whose genes all have a training single (none hidden) moves
    this share of the way from the prediction to ``pooled_additive``'s (0: not at all).
    ``combination_genes``: a gene without a training single but in training combinations takes
    its effect fitted on the training conditions (``pooled_additive``'s least squares; where the
    combinations cannot separate it from a partner without a single, the minimum-norm split)
    instead of the unseen-gene fallback, and counts as measured in the calibration categories
    and the network map.
    ``shrinkage``: above 0, a seen gene contributes its single's delta shrunk gene by gene towards
    0 by its sampling noise, ``δ · max(0, 1 − k · v / δ²)`` with ``v`` the variance of the
    difference of the condition's and the control's means and ``k`` this value (1: the
    positive-part James–Stein factor of one entry), so a gene a single barely changes adds no
    noise to the combinations summed from it. The fallbacks of unseen genes average many singles
    and use them unshrunk (0: off; pooled effects of ``combination_weight`` are kept as they
    are).
    """

    calibrate: bool = True
    calibration_genes: int = 20
    target_aware: bool = True
    propagate: bool = True
    context: bool = True
    context_genes: int = 20
    unseen: str = "auto"
    embedding: str = "data"
    n_components: int = 32
    priors: str | None = None
    network: bool = False
    max_fit_cells: int = 50_000
    combination_weight: float = 0.0
    pooled_if_better: bool = True
    pooled_share: float = 0.0
    combination_genes: bool = True
    shrinkage: float = 0.0

    def __post_init__(self) -> None:
        if not np.isfinite(self.shrinkage) or self.shrinkage < 0:
            raise ValueError(
                f"CalibratedAdditiveConfig.shrinkage must be a finite number >= 0, got "
                f"{self.shrinkage}"
            )
        if not 0.0 <= self.pooled_share <= 1.0:
            raise ValueError(
                f"CalibratedAdditiveConfig.pooled_share must be in [0, 1], got {self.pooled_share}"
            )
        if not np.isfinite(self.combination_weight) or self.combination_weight < 0:
            raise ValueError(
                "CalibratedAdditiveConfig.combination_weight must be a finite number >= 0, got "
                f"{self.combination_weight}"
            )
        if self.max_fit_cells < 2:
            raise ValueError(
                f"CalibratedAdditiveConfig.max_fit_cells must be at least 2, got {self.max_fit_cells}"
            )
        if self.unseen not in (*UNSEEN_MODES, "auto"):
            raise ValueError(
                f"CalibratedAdditiveConfig.unseen must be one of {(*UNSEEN_MODES, 'auto')}, "
                f"got {self.unseen!r}"
            )
        if self.n_components < 1:
            raise ValueError(
                f"CalibratedAdditiveConfig.n_components must be at least 1, got {self.n_components}"
            )
        if self.calibration_genes < 0:
            raise ValueError(
                "CalibratedAdditiveConfig.calibration_genes must be non-negative, got "
                f"{self.calibration_genes}"
            )
        check_embedding_spec(self.embedding, "CalibratedAdditiveConfig.embedding")

    @property
    def unseen_mode(self) -> str:
        """``unseen`` with ``auto`` resolved."""
        if self.unseen != "auto":
            return self.unseen
        return "mean" if self.embedding == "data" else "ridge"


@register_model("calibrated_additive")
class CalibratedAdditive(MeanShiftModel):
    """Summed single deltas scaled per condition category, fitted on training conditions only."""

    config_class = CalibratedAdditiveConfig
    variant_field = "embedding"

    def _fit(self, dataset, train) -> None:
        cfg = self.config
        self.context_ = (
            fit_context_calibration(dataset, self.split_, cfg.context_genes)
            if cfg.context
            else ContextCalibration()
        )
        self.guide_genes_ = dataset.guide_genes
        fitted: dict[float, dict[str, np.ndarray]] = {}  # one least-squares fit per weight

        def effects(weight: float) -> dict[str, np.ndarray]:
            if weight not in fitted:
                fitted[weight] = training_effects(
                    self.train_deltas_, dataset.cells_per_condition, weight
                )
            return fitted[weight]

        weight = cfg.combination_weight
        self.pooled_ = self._with_single(effects(weight)) if weight > 0 else {}
        self.pooled_leverage_ = (
            self._pooled_leverage(dataset.cells_per_condition, weight) if weight > 0 else {}
        )
        self.pooled_blend_ = self._with_single(effects(1.0)) if cfg.pooled_share > 0 else {}
        self.combination_effects_ = (
            self._combination_effects(effects) if cfg.combination_genes else {}
        )
        self.shrunk_ = self._shrunk_singles(dataset) if cfg.shrinkage > 0 else {}
        self.coupling_, self.coupling_held_out_ = {}, {}
        rows = self._statistics_rows(dataset, train)  # (n,) at most max_fit_cells
        if cfg.propagate and cfg.target_aware:
            self.coupling_, self.coupling_held_out_ = self._coupling(dataset, train, rows)
        self.table_ = pd.DataFrame(index=pd.Index([], dtype=str))
        if cfg.unseen_mode == "ridge" or cfg.embedding != "data":
            cells = dataset.rows(rows)  # (n, G), sparse kept: control + training
            table = correlation_embedding(cells, dataset.genes, cfg.n_components)
            if cfg.embedding != "data":
                prior = prior_gene_table(
                    cfg.embedding, dataset.genes, dataset.perturbed_genes, cfg.priors
                )
                table = with_data_embedding(prior, table)
            self.table_ = table
        self._build_estimator()

    def _pooled_leverage(self, cells: pd.Series, weight: float) -> dict[str, float]:
        """Training combination → its leverage in the pooled fit at ``weight``
        (:func:`~perturbflow.models.baselines.pooled.pooled_leverages`)."""
        names = [name for name in self.train_deltas_.index if name != CONTROL_NAME]
        leverage = pooled_leverages(names, cells.reindex(names).to_numpy(np.float64), weight)
        return {
            name: float(h)
            for name, h in zip(names, leverage, strict=True)
            if single_gene(name) is None
        }

    def _with_single(self, effects: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``effects`` (gene → ``(G,)``, fitted on every training condition) of the genes with
        a training single."""
        singles = {single_gene(name) for name in self.train_deltas_.index} - {None}
        return {gene: effect for gene, effect in effects.items() if gene in singles}

    def _combination_effects(self, effects) -> dict[str, np.ndarray]:
        """Gene → effect ``(G,)`` of the genes without a training single that are in training
        combinations, from ``effects(1.0)``: the least-squares fit over every training
        condition."""
        names = [name for name in self.train_deltas_.index if name != CONTROL_NAME]
        singles = {single_gene(name) for name in names} - {None}
        measured = {gene for name in names for gene in parse_condition(name)} - singles
        if not measured:
            return {}
        fitted = effects(1.0)
        logger.info(
            "calibrated_additive: %d gene(s) without a training single take their effect from "
            "training combinations: %s",
            len(measured),
            ", ".join(sorted(measured)[:10]) + (" …" if len(measured) > 10 else ""),
        )
        return {gene: fitted[gene] for gene in sorted(measured)}

    def _shrunk_singles(self, dataset) -> dict[str, np.ndarray]:
        """Gene → its training single's delta ``(G,)`` shrunk by its sampling noise (see
        ``shrinkage``); a condition of one cell has no variance estimate and is kept."""
        names = [n for n in self.train_deltas_.index if single_gene(n) is not None]
        if not names:
            return {}
        counts = dataset.cells_per_condition
        variances = dataset.variance_expression([CONTROL_NAME, *names])  # (1 + S, G)
        control = variances.loc[CONTROL_NAME].to_numpy() / counts[CONTROL_NAME]  # (G,)
        shrunk = {}
        for name in names:
            delta = self.train_deltas_.loc[name].to_numpy(np.float64)  # (G,)
            noise = variances.loc[name].to_numpy() / counts[name] + control  # (G,)
            with np.errstate(divide="ignore", invalid="ignore"):
                factor = 1.0 - self.config.shrinkage * noise / delta**2
            factor = np.where(np.isnan(noise), 1.0, np.clip(np.nan_to_num(factor), 0.0, 1.0))
            shrunk[single_gene(name)] = (delta * factor).astype(np.float32)
        return shrunk

    def _statistics_rows(self, dataset, train: list[str]) -> np.ndarray:
        """Row positions of the training cells, or a seeded sorted sample of ``max_fit_cells``."""
        rows = np.flatnonzero(dataset.cell_mask(train))  # (N_train,)
        cap = self.config.max_fit_cells
        if len(rows) <= cap:
            return rows
        # A generator of its own: the control-cell draw keeps its numbers.
        rng = np.random.default_rng([self.config.seed, 1])
        return np.sort(rng.choice(rows, cap, replace=False))

    @staticmethod
    def _coupling(dataset, train: list[str], rows: np.ndarray):
        """Slopes of every gene on each measured perturbed gene over the training cells ``rows``,
        and for genes perturbed in training, the same without the cells that perturb them."""
        labels = dataset.condition_labels.to_numpy()[rows]
        perturbing: dict[str, list[str]] = {}
        for name in train:
            for gene in parse_condition(name):
                perturbing.setdefault(gene, []).append(name)
        leave_out = {gene: np.isin(labels, names) for gene, names in perturbing.items()}
        return coupling_columns(
            dataset.rows(rows), dataset.genes, sorted(dataset.perturbed_genes), leave_out
        )

    def _build_estimator(self) -> None:
        singles, combos = {}, {}
        for name, row in self.train_deltas_.iterrows():
            if name == CONTROL_NAME:
                continue
            gene = single_gene(name)
            if gene is None:
                combos[name] = row.to_numpy()
            else:
                singles[gene] = row.to_numpy()
        self.estimator_ = self._estimator(singles, combos, self.shrunk_, self.config.network)
        self.held_out_errors_: dict[str, float] = {}
        self.pooled_estimator_: AdditiveShiftPrior | None = None
        if not self.pooled_:
            return
        pooled = self._estimator(singles, combos, {**self.shrunk_, **self.pooled_}, False)
        self.pooled_estimator_ = pooled
        if self.config.pooled_if_better:
            errors = self._held_out_errors(self.estimator_, pooled, combos)
            self.held_out_errors_ = errors
            use = errors["pooled"] < errors["singles"]
            logger.info(
                "calibrated_additive: seen genes take their %s (mean squared error on held-out "
                "training combinations: pooled effects %.4g, singles' deltas%s %.4g)",
                "pooled effects" if use else "singles' deltas",
                errors["pooled"],
                " with the network map" if self.config.network else "",
                errors["singles"],
            )
        else:
            network = self.estimator_.network
            use = network is None or network.penalty is None
            if not use:
                logger.info(
                    "calibrated_additive: the network map is used, so seen genes keep their "
                    "singles' deltas (not the pooled effects of combination_weight)"
                )
        if use:
            self.estimator_ = pooled

    @property
    def uses_pooled_effects(self) -> bool:
        """Whether the seen genes contribute their pooled effects (``combination_weight``) rather
        than their singles' deltas."""
        self._check_fitted()
        return self.pooled_estimator_ is not None and self.estimator_ is self.pooled_estimator_

    def _held_out_errors(
        self,
        singles: AdditiveShiftPrior,
        pooled: AdditiveShiftPrior,
        combos: dict[str, np.ndarray],
    ) -> dict[str, float]:
        """Mean squared error of each estimator on the training combinations whose genes all have
        a training single, each predicted without itself, on each combination's
        ``calibration_genes`` most changed genes (all with 0), the columns the scales are fitted
        on: the singles' deltas' calibrated sum (plus the network map's residual fitted without
        the combination, when a map is used) and the calibrated sum of pooled effects fitted
        without it (closed form). ``nan`` for both under 3 combinations."""
        names = [
            name
            for name in sorted(combos)
            if len(parse_condition(name)) >= 2 and singles.genes_all_seen(name)
        ]
        if len(names) < 3:
            return {"singles": float("nan"), "pooled": float("nan")}
        targets = np.vstack([combos[name] for name in names]).astype(np.float64)  # (D, G)
        changed = np.vstack([singles._changed_mask(target) for target in targets])  # (D, G)
        hidden = [frozenset()] * len(names)
        from_singles = singles._summed(names, hidden).astype(np.float64)  # (D, G)
        network = singles.network
        if network is not None and network.held_out is not None:
            rows = [singles._network_rows[name] for name in names]
            from_singles += network.held_out[rows]
        summed = np.vstack(
            [np.sum([self.pooled_[g] for g in parse_condition(n)], axis=0) for n in names]
        )  # (D, G) uncalibrated in-sample sums of pooled effects
        h = np.array([self.pooled_leverage_[name] for name in names])[:, None]  # (D, 1)
        # Without the combination its sum moves by what the fit gave up to it: e h / (1 − h).
        moved = -(targets - summed) * h / np.maximum(1.0 - h, 1e-6)  # (D, G)
        scales = np.vstack([pooled.scale_vector(name) for name in names])  # (D, G)
        from_pooled = pooled._summed(names, hidden) + scales * moved  # (D, G)
        return {
            "singles": float(np.mean(((targets - from_singles) ** 2)[changed])),
            "pooled": float(np.mean(((targets - from_pooled) ** 2)[changed])),
        }

    def _estimator(self, singles, combos, own, network: bool) -> AdditiveShiftPrior:
        return AdditiveShiftPrior(
            singles,
            len(self.genes_),
            self.table_,
            unseen=self.config.unseen_mode,
            combo_deltas=combos,
            calibrate=self.config.calibrate,
            var_names=list(self.genes_),
            target_aware=self.config.target_aware,
            guide_genes=self.guide_genes_,
            calibration_genes=self.config.calibration_genes,
            coupling=self.coupling_,
            coupling_held_out=self.coupling_held_out_,
            network=network,
            blend=self.pooled_blend_,
            blend_share=self.config.pooled_share,
            combination_effects=self.combination_effects_,
            own_deltas=own,
        )

    def _state(self) -> dict[str, np.ndarray]:
        # The estimator is refitted from the stored training deltas and this table on load: the
        # fit is closed-form and deterministic, so a checkpoint needs no estimator format.
        return {
            "table": self.table_.to_numpy(np.float64),
            "table_genes": np.asarray(self.table_.index, dtype=str),
            **self.context_.state(len(self.genes_)),
            "guide_names": np.asarray(list(self.guide_genes_), dtype=str),
            "guide_targets": np.asarray(list(self.guide_genes_.values()), dtype=str),
            **_slopes_state("coupling", self.coupling_, len(self.genes_)),
            **_slopes_state("coupling_held_out", self.coupling_held_out_, len(self.genes_)),
            **_slopes_state("pooled", self.pooled_, len(self.genes_)),
            **_slopes_state("pooled_blend", self.pooled_blend_, len(self.genes_)),
            **_slopes_state("combination_effects", self.combination_effects_, len(self.genes_)),
            **_slopes_state("shrunk", self.shrunk_, len(self.genes_)),
            "pooled_leverage_names": np.asarray(list(self.pooled_leverage_), dtype=str),
            "pooled_leverage": np.asarray(list(self.pooled_leverage_.values()), np.float64),
        }

    def _set_state(self, arrays) -> None:
        self.table_ = pd.DataFrame(arrays["table"], index=arrays["table_genes"].astype(str))
        self.context_ = ContextCalibration.from_state(arrays)
        self.coupling_ = _slopes_from_state("coupling", arrays)
        self.coupling_held_out_ = _slopes_from_state("coupling_held_out", arrays)
        self.pooled_ = _slopes_from_state("pooled", arrays) if "pooled" in arrays else {}
        self.pooled_blend_ = (
            _slopes_from_state("pooled_blend", arrays) if "pooled_blend" in arrays else {}
        )
        self.combination_effects_ = (
            _slopes_from_state("combination_effects", arrays)
            if "combination_effects" in arrays
            else {}
        )
        self.shrunk_ = _slopes_from_state("shrunk", arrays) if "shrunk" in arrays else {}
        self.pooled_leverage_ = dict(
            zip(
                arrays["pooled_leverage_names"].astype(str).tolist(),
                arrays["pooled_leverage"].tolist(),
                strict=True,
            )
        )
        self.guide_genes_ = dict(
            zip(
                arrays["guide_names"].astype(str).tolist(),
                arrays["guide_targets"].astype(str).tolist(),
                strict=True,
            )
        )
        self._build_estimator()

    def predict_delta(self, conditions):
        self._check_fitted()
        names = self._names(conditions)
        self._log_genes_without_single(
            names, f"the {self.config.unseen_mode} fallback", self.combination_effects_.keys()
        )
        return super().predict_delta(names)

    def _delta(self, condition: frozenset[str], name: str) -> np.ndarray:
        return self.context_.apply(self.estimator_.shifts([name])[0])


@dataclasses.dataclass(frozen=True)
class NetworkAdditiveConfig(CalibratedAdditiveConfig):
    """:class:`CalibratedAdditiveConfig` with the network map on."""

    network: bool = True


@register_model("network_additive")
class NetworkAdditive(CalibratedAdditive):
    """``calibrated_additive`` plus a learned network map of how combinations depart from it."""

    config_class = NetworkAdditiveConfig


def _slopes_state(key: str, slopes: Mapping[str, np.ndarray], n_genes: int) -> dict:
    """Gene → slopes as two checkpoint arrays (names and a ``(P, G)`` matrix)."""
    names = list(slopes)
    matrix = np.vstack([slopes[g] for g in names]) if names else np.zeros((0, n_genes))
    return {f"{key}_genes": np.asarray(names, dtype=str), key: matrix.astype(np.float32)}


def _slopes_from_state(key: str, arrays) -> dict[str, np.ndarray]:
    names = arrays[f"{key}_genes"].astype(str).tolist()
    return dict(zip(names, np.asarray(arrays[key], dtype=np.float32), strict=True))
