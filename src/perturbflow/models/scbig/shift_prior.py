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


class AdditiveShiftPrior:
    """Per-gene expression shifts from training singles, with a fallback for other genes."""

    def __init__(
        self,
        single_deltas: Mapping[str, np.ndarray],
        n_genes: int,
        prior: pd.DataFrame | None = None,
        unseen: str = "mean",
        alpha: float = 1.0,
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
        if unseen == "ridge" and covered and d:
            features = self.prior.loc[covered].to_numpy(np.float64)  # (S', d)
            targets = np.vstack([single_deltas[g] for g in covered]).astype(np.float64)
            self.feature_mean = features.mean(axis=0).astype(np.float32)
            centred = features - self.feature_mean
            gram = centred.T @ centred + alpha * np.eye(d)  # (d, d)
            self.coef = np.linalg.solve(gram, centred.T @ (targets - self.mean_delta)).astype(
                np.float32
            )
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
