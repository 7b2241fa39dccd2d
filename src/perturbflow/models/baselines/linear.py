"""The linear baseline of Ahlmann-Eltze et al. (Nat Methods 2025): ``Y ≈ G W Pᵀ + b``."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from perturbflow.data.conditions import parse_condition
from perturbflow.models.base import register_model
from perturbflow.models.baselines.mean_shift import MeanShiftModel

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LinearConfig:
    """``n_components``: PCA rank of the gene embedding G; ``ridge``: penalty on W."""

    n_components: int = 10
    ridge: float = 0.1
    max_control_cells: int = 2000
    seed: int = 0


@register_model("linear")
class Linear(MeanShiftModel):
    """Y (genes × training conditions, mean expression) ≈ G W Pᵀ + b.

    G (genes × k) is the top-k PCA embedding of the genes in Y; b is the per-gene mean of Y; a
    perturbation's embedding P is the G row of its gene (summed over the genes of a combination).
    W = (GᵀG + λI)⁻¹ Gᵀ (Y − b) P (PᵀP + λI)⁻¹. A perturbed gene that is not measured has no G
    row: it contributes nothing (its prediction is ``b``), which is logged.
    """

    config_class = LinearConfig

    def _fit(self, dataset, train) -> None:
        deltas = self.train_deltas_  # (C, G)
        expression = deltas.to_numpy().T + self.control_mean_[:, None]  # (G, C)
        self.offset_ = expression.mean(axis=1)  # (G,)
        centred = expression - self.offset_[:, None]  # (G, C)
        self._gene_index = {gene: i for i, gene in enumerate(self.genes_)}
        k = max(1, min(self.config.n_components, *centred.shape))
        u, s, _ = np.linalg.svd(centred, full_matrices=False)
        self.gene_embedding_ = u[:, :k]  # (G, k)
        perturbation = np.vstack([self._embed(name) for name in deltas.index])  # (C, k)
        lam = self.config.ridge
        left = np.linalg.solve(
            self.gene_embedding_.T @ self.gene_embedding_ + lam * np.eye(k), self.gene_embedding_.T
        )
        right = np.linalg.solve(
            perturbation.T @ perturbation + lam * np.eye(k), perturbation.T
        ).T  # (C, k)
        self.weights_ = left @ centred @ right  # (k, k)

    def _embed(self, name: str) -> np.ndarray:
        index = self._gene_index
        rows = [
            self.gene_embedding_[index[gene]] for gene in parse_condition(name) if gene in index
        ]
        return np.sum(rows, axis=0) if rows else np.zeros(self.gene_embedding_.shape[1])

    def _delta(self, condition, name) -> np.ndarray:
        unmeasured = sorted(set(condition) - set(self.genes_))
        if unmeasured:
            logger.debug(
                "linear: %s names unmeasured gene(s) %s with no embedding", name, unmeasured
            )
        predicted = self.gene_embedding_ @ self.weights_ @ self._embed(name) + self.offset_
        return predicted - self.control_mean_

    def _state(self):
        return {
            "gene_embedding": self.gene_embedding_,
            "weights": self.weights_,
            "offset": self.offset_,
        }

    def _set_state(self, arrays) -> None:
        self.gene_embedding_ = arrays["gene_embedding"]
        self.weights_ = arrays["weights"]
        self.offset_ = arrays["offset"]
        self._gene_index = {gene: i for i, gene in enumerate(self.genes_)}
