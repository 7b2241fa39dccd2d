"""The additive starting point of the flow: control cells shifted by the condition's genes.

For a condition ``S`` the shift is ``Σ_{g∈S} delta(g)`` in gene space, where ``delta(g)`` is the
mean expression change of gene ``g``'s training single. A gene without a training single gets the
mean single delta (``unseen="mean"``, the additive baseline's convention) or a ridge prediction
from its prior embedding (``unseen="ridge"``, GenePert-style, fitted on the seen singles; genes
without a prior vector still get the mean). The flow then transports *shifted* control cells to
real cells in the latent space, so it learns what additivity misses — interactions, program-level
coordination, distribution shape — and with a zero velocity the model is exactly additive.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from perturbflow.data.conditions import parse_condition

UNSEEN_MODES = ("mean", "ridge")


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


class AdditiveShiftPrior:
    """Per-gene expression shifts from training singles, with a fallback for other genes."""

    def __init__(
        self,
        single_deltas: Mapping[str, np.ndarray],
        n_genes: int,
        prior: pd.DataFrame | None = None,
        unseen: str = "mean",
        alpha: float | None = None,
    ) -> None:
        if unseen not in UNSEEN_MODES:
            raise ValueError(f"unseen must be one of {UNSEEN_MODES}, got {unseen!r}")
        self.genes = sorted(single_deltas)
        self.deltas = (
            np.vstack([single_deltas[g] for g in self.genes]).astype(np.float32)
            if self.genes
            else np.zeros((0, n_genes), np.float32)
        )  # (S, G)
        self.mean_delta = (
            self.deltas.mean(axis=0) if self.genes else np.zeros(n_genes, np.float32)
        )  # (G,)
        self.prior = prior if prior is not None else pd.DataFrame(index=pd.Index([], dtype=str))
        self.unseen = unseen
        d = self.prior.shape[1]
        self.coef = np.zeros((d, n_genes), np.float32)  # (d, G)
        self.feature_mean = np.zeros(d, np.float32)  # (d,)
        covered = [g for g in self.genes if g in self.prior.index]
        self.alpha = float("inf")
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
        self._index = {g: i for i, g in enumerate(self.genes)}

    def gene_delta(self, gene: str, hidden: bool = False) -> np.ndarray:
        """Expression shift ``(G,)`` of one gene; ``hidden`` treats it as never seen perturbed."""
        if gene in self._index and not hidden:
            return self.deltas[self._index[gene]]
        if self.unseen == "ridge" and gene in self.prior.index and self.prior.shape[1]:
            features = self.prior.loc[gene].to_numpy(np.float32) - self.feature_mean
            return features @ self.coef + self.mean_delta
        return self.mean_delta

    def shifts(
        self, conditions: Sequence[str], hidden: Sequence[frozenset[str]] | None = None
    ) -> np.ndarray:
        """Summed shifts ``(C, G)`` of canonical condition names (control: zero).

        ``hidden[i]`` names genes of condition ``i`` to treat as never seen perturbed.
        """
        hidden = hidden if hidden is not None else [frozenset()] * len(conditions)
        rows = [
            np.sum([self.gene_delta(g, g in hide) for g in sorted(genes)], axis=0)
            if (genes := parse_condition(name))
            else np.zeros_like(self.mean_delta)
            for name, hide in zip(conditions, hidden, strict=True)
        ]
        return np.vstack(rows).astype(np.float32) if rows else np.zeros((0, len(self.mean_delta)))

    def state(self) -> dict[str, np.ndarray]:
        return {
            "genes": np.asarray(self.genes, dtype=str),
            "deltas": self.deltas,
            "coef": self.coef,
            "feature_mean": self.feature_mean,
            "mean_delta": self.mean_delta,
        }

    @classmethod
    def from_state(
        cls, arrays: Mapping[str, np.ndarray], prior: pd.DataFrame, unseen: str
    ) -> AdditiveShiftPrior:
        model = cls({}, len(arrays["mean_delta"]), prior, unseen)
        model.genes = [str(g) for g in arrays["genes"]]
        model.deltas = arrays["deltas"]
        model.coef = arrays["coef"]
        model.feature_mean = arrays["feature_mean"]
        model.mean_delta = arrays["mean_delta"]
        model._index = {g: i for i, g in enumerate(model.genes)}
        return model
