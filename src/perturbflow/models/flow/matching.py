"""Conditional flow matching: sample times, interpolate, target velocity, loss (docs/method.md §2.4).

Stateless functions on tensors. Randomness is explicit: pass a ``torch.Generator`` (or the noise
itself); nothing here draws from torch's global generator.

Shapes: ``B`` batch, ``D`` latent dimension, ``C`` condition-embedding dimension.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

#: ``model(x_t (B, D), t (B,), condition (B, C)) -> velocity (B, D)``.
VelocityModel = Callable[[Tensor, Tensor, Tensor], Tensor]


def sample_time(
    batch_size: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Draw ``batch_size`` times uniformly from [0, 1]; returns shape ``(B,)``.

    Without a generator a fresh, unseeded one is used (non-reproducible by design, but never
    the global RNG). The draw happens on the generator's device, then moves to ``device``.
    """
    if batch_size < 0:
        raise ValueError(f"batch_size must be non-negative, got {batch_size}")
    generator = generator if generator is not None else _fresh_generator()
    t = torch.rand(batch_size, generator=generator, device=generator.device, dtype=dtype)  # (B,)
    return t.to(device) if device is not None else t  # (B,)


def interpolate(
    x0: Tensor,
    x1: Tensor,
    t: Tensor,
    sigma: float = 0.0,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Point on the straight path from ``x0`` to ``x1`` at time ``t``, optionally blurred.

    ``x_t = (1 - t) x0 + t x1 + sigma * noise`` with ``x0, x1`` of shape ``(B, D)`` and ``t`` of
    shape ``(B,)`` (or a scalar). With ``sigma > 0`` the noise ``(B, D)`` is taken from ``noise``
    or, if that is omitted, drawn standard normal from ``generator`` (one of the two is required).
    """
    if x0.shape != x1.shape:
        raise ValueError(
            f"x0 and x1 must have the same shape, got {tuple(x0.shape)} and {tuple(x1.shape)}"
        )
    t = _as_column(t, x0)  # (B, 1)
    x_t = (1.0 - t) * x0 + t * x1  # (B, D)
    if sigma == 0.0:
        return x_t  # (B, D)
    if sigma < 0.0:
        raise ValueError(f"sigma must be non-negative, got {sigma}")
    if noise is None:
        if generator is None:
            raise ValueError("sigma > 0 needs `noise` or a `generator` to draw it from")
        noise = torch.randn(
            x0.shape, generator=generator, device=generator.device, dtype=x0.dtype
        ).to(x0.device)  # (B, D)
    elif noise.shape != x0.shape:
        raise ValueError(f"noise must have shape {tuple(x0.shape)}, got {tuple(noise.shape)}")
    return x_t + sigma * noise  # (B, D)


def target_velocity(x0: Tensor, x1: Tensor) -> Tensor:
    """Velocity of the straight path, ``x1 - x0`` (the same for every ``t`` and ``sigma``)."""
    return x1 - x0  # (B, D)


def flow_matching_loss(
    velocity_model: VelocityModel,
    x0: Tensor,
    x1: Tensor,
    condition: Tensor,
    t: Tensor | None = None,
    sigma: float = 0.0,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
) -> Tensor:
    """Mean squared error between ``velocity_model(x_t, t, condition)`` and ``x1 - x0``.

    ``x0`` and ``x1`` ``(B, D)`` must already be paired (see :func:`ot_pair`); ``condition``
    ``(B, C)`` belongs to the targets ``x1``. ``t`` ``(B,)`` is drawn from ``generator`` when
    omitted, as is the noise when ``sigma > 0`` and ``noise`` is omitted. Returns a scalar.
    """
    if t is None:
        t = sample_time(x0.shape[0], generator=generator, device=x0.device, dtype=x0.dtype)  # (B,)
    x_t = interpolate(x0, x1, t, sigma=sigma, noise=noise, generator=generator)  # (B, D)
    predicted = velocity_model(x_t, t, condition)  # (B, D)
    return torch.mean((predicted - target_velocity(x0, x1)) ** 2)  # ()


def _as_column(t: Tensor | float, like: Tensor) -> Tensor:
    """Times as a ``(B, 1)`` column (or a ``(1, 1)`` scalar) that broadcasts over ``(B, D)``."""
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)  # (B,) or ()
    if t.ndim == 0:
        return t.reshape(1, 1)  # (1, 1)
    if t.ndim != 1 or t.shape[0] != like.shape[0]:
        raise ValueError(
            f"t must be a scalar or have shape ({like.shape[0]},), got {tuple(t.shape)}"
        )
    return t[:, None]  # (B, 1)


def _fresh_generator() -> torch.Generator:
    generator = torch.Generator()
    generator.seed()
    return generator
