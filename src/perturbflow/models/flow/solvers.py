"""Fixed-step ODE solvers for ``dx/dt = v(x, t, condition)`` and a registry of them.

Everything is differentiable: nothing here disables autograd, so the structure-aware losses of
docs/method.md §2.5 can backpropagate through an integration. Callers that only predict wrap the call in
``torch.no_grad()`` (and put the model in ``eval()`` mode) themselves.

Shapes: ``B`` batch, ``D`` state dimension, ``C`` condition dimension, ``S`` steps.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

#: ``velocity_fn(x (B, D), t (B,), condition (B, C)) -> (B, D)``.
VelocityFn = Callable[[Tensor, Tensor, Tensor], Tensor]
#: ``step(velocity_fn, x (B, D), t (B,), dt, condition (B, C)) -> x at t + dt (B, D)``.
StepFn = Callable[[VelocityFn, Tensor, Tensor, float, Tensor], Tensor]


def euler_step(
    velocity_fn: VelocityFn, x: Tensor, t: Tensor, dt: float, condition: Tensor
) -> Tensor:
    """First-order explicit Euler step."""
    return x + dt * velocity_fn(x, t, condition)  # (B, D)


def midpoint_step(
    velocity_fn: VelocityFn, x: Tensor, t: Tensor, dt: float, condition: Tensor
) -> Tensor:
    """Second-order explicit midpoint step."""
    k1 = velocity_fn(x, t, condition)  # (B, D)
    return x + dt * velocity_fn(x + 0.5 * dt * k1, t + 0.5 * dt, condition)  # (B, D)


def rk4_step(velocity_fn: VelocityFn, x: Tensor, t: Tensor, dt: float, condition: Tensor) -> Tensor:
    """Classical fourth-order Runge-Kutta step."""
    k1 = velocity_fn(x, t, condition)  # (B, D)
    k2 = velocity_fn(x + 0.5 * dt * k1, t + 0.5 * dt, condition)  # (B, D)
    k3 = velocity_fn(x + 0.5 * dt * k2, t + 0.5 * dt, condition)  # (B, D)
    k4 = velocity_fn(x + dt * k3, t + dt, condition)  # (B, D)
    return x + (dt / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)  # (B, D)


SOLVERS: dict[str, StepFn] = {
    "euler": euler_step,
    "midpoint": midpoint_step,
    "rk4": rk4_step,
}


def integrate(
    velocity_fn: VelocityFn,
    x0: Tensor,
    condition: Tensor | None,
    n_steps: int = 20,
    method: str = "euler",
    t0: float = 0.0,
    t1: float = 1.0,
    return_trajectory: bool = False,
) -> Tensor:
    """Integrate ``dx/dt = velocity_fn(x, t, condition)`` from ``t0`` to ``t1`` in equal steps.

    ``x0`` is ``(B, D)``; ``condition`` ``(B, C)`` (or ``None``) is passed unchanged to every
    call, with ``t`` as a ``(B,)`` tensor. Returns the state at ``t1`` ``(B, D)``, or with
    ``return_trajectory`` all ``n_steps + 1`` states ``(S + 1, B, D)`` starting with ``x0``.
    ``t1 < t0`` integrates backwards.
    """
    if method not in SOLVERS:
        raise ValueError(f"unknown ODE solver {method!r}; available: {', '.join(SOLVERS)}")
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps must be an integer of at least 1, got {n_steps!r}")
    step = SOLVERS[method]
    dt = (t1 - t0) / n_steps
    x = x0  # (B, D)
    trajectory = [x0] if return_trajectory else []
    for k in range(n_steps):
        t = torch.full((x0.shape[0],), t0 + k * dt, dtype=x0.dtype, device=x0.device)  # (B,)
        x = step(velocity_fn, x, t, dt, condition)  # (B, D)
        if return_trajectory:
            trajectory.append(x)
    if return_trajectory:
        return torch.stack(trajectory)  # (S + 1, B, D)
    return x  # (B, D)
