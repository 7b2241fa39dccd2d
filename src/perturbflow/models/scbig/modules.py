"""Autoencoder choices for the latent space (GCAE, the MLP ablation, fixed PCA) and the
condition model (gene vectors plus the start model's single deltas)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from perturbflow.models.autoencoders import MLPAEConfig, MLPAutoencoder
from perturbflow.models.condition_encoder import ConditionEncoder
from perturbflow.models.gcae import GCAE, GCAEConfig
from perturbflow.models.scbig.config import ScBIGConfig
from perturbflow.programs.grc import GenePrograms


class PCAAutoencoder(nn.Module):
    """A fixed linear encoder/decoder: the "flow in PCA space" ablation (nothing to train)."""

    def __init__(self, n_genes: int, latent_dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_genes))  # (G,)
        self.register_buffer("components", torch.zeros(latent_dim, n_genes))  # (L, G)

    def fit(self, expression: np.ndarray) -> PCAAutoencoder:
        data = torch.as_tensor(expression, dtype=torch.float32)  # (N, G)
        mean = data.mean(dim=0)  # (G,)
        _, _, vh = torch.linalg.svd(data - mean, full_matrices=False)  # (min, G)
        k = min(self.components.shape[0], vh.shape[0])
        self.mean.copy_(mean)
        self.components.zero_()
        self.components[:k] = vh[:k]
        return self

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) @ self.components.T  # (B, L)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.components + self.mean  # (B, G)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encode(x)
        return self.decode(z), z


class Centred(nn.Module):
    """Wraps an autoencoder so it sees gene-centred inputs: ``decode(z) + mean``.

    Without centring most early optimisation goes into learning each gene's mean expression.
    """

    def __init__(self, inner: nn.Module, gene_mean: np.ndarray) -> None:
        super().__init__()
        self.inner = inner
        self.register_buffer("gene_mean", torch.as_tensor(np.asarray(gene_mean, np.float32)))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner.encode(x - self.gene_mean)  # (B, L)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.inner.decode(z) + self.gene_mean  # (B, G)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encode(x)
        return self.decode(z), z


def build_autoencoder(
    config: ScBIGConfig, programs: GenePrograms, gene_mean: np.ndarray
) -> nn.Module:
    """The autoencoder named by ``config.autoencoder``, wired to the gene programs.

    ``gene_mean`` ``(G,)`` centres the inputs of the trained autoencoders (PCA centres itself).
    """
    n_genes = programs.n_genes
    if config.autoencoder == "pca":
        return PCAAutoencoder(n_genes, config.latent_dim)
    if config.autoencoder == "mlp":
        return Centred(
            MLPAutoencoder(n_genes, MLPAEConfig(latent_dim=config.latent_dim)), gene_mean
        )
    cluster_embedding = (
        programs.centroids[programs.labels] if programs.centroids.shape[1] > 0 else None
    )  # (G, d)
    gcae_config = GCAEConfig(
        chunk_size=min(config.chunk_size, n_genes),
        token_dim=config.token_dim,
        n_heads=config.n_heads,
        n_blocks=config.n_blocks,
        n_modules=config.n_modules,
        latent_dim=config.latent_dim,
    )
    return Centred(GCAE(n_genes, programs.order, cluster_embedding, gcae_config), gene_mean)


N_DELTA_POOLS = 4  # sum, pairwise product, max, min


def pooled_program_deltas(deltas: np.ndarray, membership: np.ndarray) -> np.ndarray:
    """Order-free pools ``(4K,)`` of a condition's single deltas ``(k, G)`` in program space.

    ``membership`` ``(K, G)`` averages genes into programs; the pools are the sum, the sum of
    pairwise products, the max and the min over the ``k`` genes — what a combinator of single
    responses sees, so the flow can learn interactions and not only a scale.
    """
    programs = deltas @ membership.T  # (k, K)
    total = programs.sum(axis=0)  # (K,)
    pairwise = 0.5 * (total**2 - (programs**2).sum(axis=0))  # (K,): Σ_{i<j} z_i z_j
    return np.concatenate([total, pairwise, programs.max(axis=0), programs.min(axis=0)])


class ConditionModel(nn.Module):
    """Condition embedding ``(B, E)``: the gene-set encoder plus an MLP over pooled deltas.

    ``delta_features(names, hidden) -> (B, F)`` gives the start model's pooled single deltas
    (None: gene vectors only). The MLP's output layer starts at zero, so training begins from the
    gene-vector embedding.
    """

    def __init__(
        self,
        encoder: ConditionEncoder,
        delta_features: Callable[[Sequence[str], Sequence[frozenset[str]]], np.ndarray] | None,
        n_features: int,
        hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.delta_features = delta_features
        self.delta_mlp = None
        if delta_features is not None:
            output = nn.Linear(hidden_dim, encoder.config.output_dim)
            nn.init.zeros_(output.weight)
            nn.init.zeros_(output.bias)
            self.delta_mlp = nn.Sequential(nn.Linear(n_features, hidden_dim), nn.SiLU(), output)

    def encode(
        self, conditions: Sequence[str], hidden: Sequence[frozenset[str]] | None = None
    ) -> torch.Tensor:
        embedding = self.encoder.encode(conditions, hidden=hidden)  # (B, E)
        if self.delta_mlp is None:
            return embedding
        hidden = hidden if hidden is not None else [frozenset()] * len(conditions)
        features = torch.as_tensor(
            self.delta_features(conditions, hidden), dtype=embedding.dtype
        ).to(embedding.device)  # (B, F)
        return embedding + self.delta_mlp(features)  # (B, E)
