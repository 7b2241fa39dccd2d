"""GenePert-style baselines on gene embeddings: ridge regression and nearest neighbour.

The embedding source is a parameter: ``"data"`` (default) embeds genes by the correlation
structure of the *training* cells (control + training conditions); a path to a CSV/TSV table
(gene symbol index) or an in-memory DataFrame uses prior knowledge instead. A condition's
embedding is the mean of its genes' embeddings. A gene absent from the embedding either raises
:class:`MissingEmbeddingError` (``missing="error"``) or gets the mean embedding of the training
perturbed genes, with a warning (``missing="mean"``, the default).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pandas as pd

from perturbflow.data.conditions import CONTROL_NAME, parse_condition
from perturbflow.models.base import register_model
from perturbflow.models.baselines.mean_shift import MeanShiftModel
from perturbflow.programs.priors import (
    check_embedding_spec,
    correlation_embedding,
    prior_gene_table,
)

logger = logging.getLogger(__name__)


class MissingEmbeddingError(KeyError):
    """A perturbed gene has no vector in the chosen embedding source."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclasses.dataclass(frozen=True)
class EmbeddingConfig:
    """Options of the embedding baselines.

    embedding: ``"data"``, a registered prior source (``go``, ``ppi``, ``text``, ``concat``,
    ``mean``; several joined by ``+``) or a path to a gene-embedding table (CSV/TSV/parquet,
    first column = symbol); see :mod:`perturbflow.programs.priors.resolver`. The model name
    ``ridge[go]`` is ``ridge`` with ``embedding="go"``. priors: the data folder holding
    ``priors/`` (default: ``$PERTURBFLOW_DATA_DIR``, else ``../shared/data``).
    n_components: size of the data-derived embedding. alpha: ridge penalty.
    missing: ``"mean"`` (warn, use the mean embedding) or ``"error"``.
    """

    embedding: str = "data"
    priors: str | None = None
    n_components: int = 32
    alpha: float = 1.0
    missing: str = "mean"
    max_control_cells: int = 2000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.missing not in ("mean", "error"):
            raise ValueError(f"missing must be 'mean' or 'error', got {self.missing!r}")
        check_embedding_spec(self.embedding, "embedding")


class _EmbeddingModel(MeanShiftModel):
    config_class = EmbeddingConfig
    variant_field = "embedding"
    reports_unknown_genes = True  # _condition_embedding warns once per gene without a vector
    _warned: set[str]

    def __init__(self, config=None) -> None:
        super().__init__(config)
        self._warned = set()

    def _fit(self, dataset, train) -> None:
        if self.config.embedding == "data":
            cells = dataset.matrix(train)  # (N_train, G), sparse kept: control + training only
            table = correlation_embedding(cells, dataset.genes, self.config.n_components)
        else:
            table = prior_gene_table(
                self.config.embedding,
                dataset.genes,
                dataset.perturbed_genes,
                self.config.priors,
            )
        self.embedding_ = table
        perturbed = sorted(
            {gene for name in self.train_deltas_.index for gene in parse_condition(name)}
        )
        known = [gene for gene in perturbed if gene in table.index]
        self.fallback_ = (
            table.loc[known].to_numpy().mean(axis=0) if known else np.zeros(table.shape[1])
        )
        self._fit_embedding()

    def _fit_embedding(self) -> None:
        """Fit on condition embeddings of the training perturbations."""

    def known_genes(self) -> set[str]:
        return {*super().known_genes(), *map(str, self.embedding_.index)}

    def _condition_embedding(self, name: str) -> np.ndarray:
        genes = sorted(parse_condition(name))
        missing = [gene for gene in genes if gene not in self.embedding_.index]
        if missing:
            message = (
                f"{self.name}: condition {name!r}: gene(s) {missing} have no vector in the "
                f"{self.config.embedding!r} embedding"
            )
            if self.config.missing == "error":
                raise MissingEmbeddingError(
                    message + "; choose another embedding or missing='mean'"
                )
            if not set(missing) <= self._warned:
                logger.warning("%s; using the mean embedding of training genes", message)
                self._warned.update(missing)
        rows = [
            self.embedding_.loc[gene].to_numpy()
            if gene in self.embedding_.index
            else self.fallback_
            for gene in genes
        ]
        return np.mean(rows, axis=0)

    def _training_matrix(self) -> tuple[np.ndarray, np.ndarray]:
        names = [name for name in self.train_deltas_.index if name != CONTROL_NAME]
        features = np.vstack([self._condition_embedding(name) for name in names])  # (C, d)
        return features, self.train_deltas_.loc[names].to_numpy()  # (C, G)

    def _state(self):
        return {
            "embedding": self.embedding_.to_numpy(),
            "embedding_genes": np.asarray(self.embedding_.index, dtype=str),
            "fallback": self.fallback_,
        }

    def _set_state(self, arrays) -> None:
        self.embedding_ = pd.DataFrame(
            arrays["embedding"], index=arrays["embedding_genes"].astype(str)
        )
        self.fallback_ = arrays["fallback"]
        self._fit_embedding()


@register_model("ridge")
class Ridge(_EmbeddingModel):
    """GenePert-style ridge regression from a condition's gene embedding to its delta."""

    def _fit_embedding(self) -> None:
        features, deltas = self._training_matrix()
        self.feature_mean_ = features.mean(axis=0)  # (d,)
        self.delta_mean_ = deltas.mean(axis=0)  # (G,)
        x = features - self.feature_mean_
        gram = x.T @ x + self.config.alpha * np.eye(x.shape[1])
        self.coef_ = np.linalg.solve(gram, x.T @ (deltas - self.delta_mean_))  # (d, G)

    def _delta(self, condition, name) -> np.ndarray:
        features = self._condition_embedding(name) - self.feature_mean_
        return features @ self.coef_ + self.delta_mean_


@register_model("nearest_neighbor")
class NearestNeighbor(_EmbeddingModel):
    """Predicts the delta of the training condition closest in embedding space (cosine)."""

    def _fit_embedding(self) -> None:
        features, deltas = self._training_matrix()
        norms = np.linalg.norm(features, axis=1, keepdims=True)
        self.train_features_ = np.divide(
            features, norms, out=np.zeros_like(features), where=norms > 0
        )
        self.train_delta_matrix_ = deltas

    def _delta(self, condition, name) -> np.ndarray:
        query = self._condition_embedding(name)
        norm = np.linalg.norm(query)
        similarity = self.train_features_ @ (query / norm if norm > 0 else query)
        return self.train_delta_matrix_[int(np.argmax(similarity))]
