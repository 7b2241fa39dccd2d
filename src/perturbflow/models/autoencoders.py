"""The autoencoder protocol, the plain MLP autoencoder ablation and the reconstruction loss.

Every expression autoencoder (the GCAE of docs/method.md §2.2 in :mod:`perturbflow.models.gcae`, or the
MLP ablation "no module attention" here) is a pure torch module on tensors: ``encode`` maps cells ×
genes to cells × latent, ``decode`` maps back, ``forward`` returns both the reconstruction and the
latent code. The training plan only sees this protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn


@runtime_checkable
class Autoencoder(Protocol):
    """An expression autoencoder: (B, G) log-expression ↔ (B, latent_dim) codes."""

    n_genes: int
    latent_dim: int

    def encode(self, x: torch.Tensor) -> torch.Tensor: ...

    def decode(self, z: torch.Tensor) -> torch.Tensor: ...

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


def reconstruction_loss(recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mean squared error over cells and genes; ``recon`` and ``x`` are (B, G). Returns a scalar."""
    return F.mse_loss(recon, x)


@dataclass(frozen=True)
class MLPAEConfig:
    """The plain MLP autoencoder (the "no module attention" ablation of docs/method.md §2.2).

    Attributes:
        hidden_dims: widths of the encoder's hidden layers, genes → ... → latent; the decoder
            mirrors them in reverse.
        latent_dim: size of the latent code.
        dropout: dropout after every hidden activation (0 disables it).
    """

    hidden_dims: tuple[int, ...] = (512, 256)
    latent_dim: int = 50
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.latent_dim < 1:
            raise ValueError(f"latent_dim must be at least 1, got {self.latent_dim}")
        if any(width < 1 for width in self.hidden_dims):
            raise ValueError(f"hidden_dims must be positive, got {self.hidden_dims}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


def _mlp(widths: list[int], dropout: float) -> nn.Sequential:
    """Linear layers through ``widths`` with GELU (+ dropout) between them, none after the last."""
    layers: list[nn.Module] = []
    for index, (width_in, width_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers.append(nn.Linear(width_in, width_out))
        if index < len(widths) - 2:
            layers.append(nn.GELU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class MLPAutoencoder(nn.Module):
    """Genes → hidden layers → latent → mirrored hidden layers → genes; no gene structure used."""

    def __init__(self, n_genes: int, config: MLPAEConfig | None = None) -> None:
        super().__init__()
        if n_genes < 1:
            raise ValueError(f"n_genes must be at least 1, got {n_genes}")
        self.config = config or MLPAEConfig()
        self.n_genes = int(n_genes)
        self.latent_dim = self.config.latent_dim
        widths = [self.n_genes, *self.config.hidden_dims, self.latent_dim]
        self.encoder = _mlp(widths, self.config.dropout)
        self.decoder = _mlp(widths[::-1], self.config.dropout)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, G) expression → (B, latent_dim) latent codes."""
        return self.encoder(x)  # (B, latent)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, latent_dim) latent codes → (B, G) reconstructed expression."""
        return self.decoder(z)  # (B, G)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(recon (B, G), z (B, latent_dim))``."""
        z = self.encode(x)  # (B, latent)
        return self.decode(z), z  # (B, G), (B, latent)
