"""The conditional velocity field ``v(x_t, t, condition)`` of docs/method.md §2.4 (a torch module).

Shapes: ``B`` batch, ``D`` latent dimension, ``C`` condition-embedding dimension, ``T`` time
embedding dimension, ``H`` hidden width.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class VelocityConfig:
    """Architecture of :class:`VelocityField` (scBIG defaults: 2 hidden layers x 1024).

    ``condition_dim = 0`` gives an unconditional field. ``zero_init_output`` starts the field at
    zero velocity (the identity flow), which keeps early training stable.
    """

    latent_dim: int
    condition_dim: int
    hidden_dim: int = 1024
    n_layers: int = 2
    dropout: float = 0.1
    time_dim: int = 64
    zero_init_output: bool = True

    def __post_init__(self) -> None:
        for name in ("latent_dim", "hidden_dim", "n_layers"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"VelocityConfig.{name} must be at least 1, got {getattr(self, name)}"
                )
        if self.time_dim < 2:
            raise ValueError(f"VelocityConfig.time_dim must be at least 2, got {self.time_dim}")
        if self.condition_dim < 0:
            raise ValueError(
                f"VelocityConfig.condition_dim must be non-negative, got {self.condition_dim}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"VelocityConfig.dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class TimeEmbedding(nn.Module):
    """Sinusoidal embedding of times in [0, 1]: ``(B,) -> (B, dim)``.

    Times are scaled by ``scale`` (1000, as for diffusion time steps) and fed through sines and
    cosines with geometrically spaced periods up to ``max_period``, so both slow and fast
    variation in ``t`` are easy to represent. An odd ``dim`` gets one zero column.
    """

    def __init__(self, dim: int, max_period: float = 10_000.0, scale: float = 1000.0) -> None:
        super().__init__()
        if dim < 2:
            raise ValueError(f"TimeEmbedding dim must be at least 2, got {dim}")
        self.dim = dim
        self.scale = scale
        half = dim // 2
        frequencies = torch.exp(
            -math.log(max_period) * torch.arange(half, dtype=torch.float32) / half
        )  # (T/2,)
        self.register_buffer("frequencies", frequencies, persistent=False)

    def forward(self, t: Tensor) -> Tensor:
        angles = self.scale * t.to(self.frequencies.dtype)[:, None] * self.frequencies  # (B, T/2)
        embedding = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)  # (B, 2*(T/2))
        if self.dim % 2:
            embedding = nn.functional.pad(embedding, (0, 1))  # (B, T)
        return embedding  # (B, T)


class VelocityField(nn.Module):
    """MLP velocity ``v(x_t (B, D), t (B,), condition (B, C)) -> (B, D)``.

    The input is ``[x_t, time_embedding(t), condition]``; ``n_layers`` hidden layers of width
    ``hidden_dim`` with SiLU and dropout; a linear output layer to ``latent_dim``. ``t`` may
    also be a scalar (shared by the batch) and ``condition`` may be ``None`` when
    ``condition_dim == 0``. The architecture is :attr:`config`, for checkpoints.
    """

    def __init__(
        self,
        latent_dim: int,
        condition_dim: int,
        hidden_dim: int = 1024,
        n_layers: int = 2,
        dropout: float = 0.1,
        time_dim: int = 64,
        zero_init_output: bool = True,
    ) -> None:
        super().__init__()
        self.config = VelocityConfig(
            latent_dim=latent_dim,
            condition_dim=condition_dim,
            hidden_dim=hidden_dim,
            n_layers=n_layers,
            dropout=dropout,
            time_dim=time_dim,
            zero_init_output=zero_init_output,
        )
        self.time_embedding = TimeEmbedding(time_dim)
        layers: list[nn.Module] = []
        width = latent_dim + time_dim + condition_dim
        for _ in range(n_layers):
            layers += [nn.Linear(width, hidden_dim), nn.SiLU(), nn.Dropout(dropout)]
            width = hidden_dim
        self.hidden = nn.Sequential(*layers)
        self.output = nn.Linear(hidden_dim, latent_dim)
        if zero_init_output:
            nn.init.zeros_(self.output.weight)
            nn.init.zeros_(self.output.bias)

    @classmethod
    def from_config(cls, config: VelocityConfig) -> VelocityField:
        return cls(**dataclasses.asdict(config))

    def forward(self, x_t: Tensor, t: Tensor, condition: Tensor | None = None) -> Tensor:
        batch_size = x_t.shape[0]
        t = torch.as_tensor(t, dtype=x_t.dtype, device=x_t.device)  # (B,) or ()
        if t.ndim == 0:
            t = t.expand(batch_size)  # (B,)
        if condition is None:
            if self.config.condition_dim:
                raise ValueError(
                    f"this field needs a condition of width {self.config.condition_dim}"
                )
            condition = x_t.new_zeros(batch_size, 0)  # (B, 0)
        inputs = torch.cat([x_t, self.time_embedding(t).to(x_t.dtype), condition], dim=1)
        # inputs: (B, D + T + C)
        return self.output(self.hidden(inputs))  # (B, D)
