"""Fixed-step ODE solvers on equations with known solutions."""

from __future__ import annotations

import math

import pytest
import torch

from perturbflow.models.flow import SOLVERS, VelocityField, integrate


def _linear(a: float):
    def velocity(x, t, condition):
        return a * x  # (B, D)

    return velocity


def _error(method: str, n_steps: int, a: float = 1.5) -> float:
    x0 = torch.ones(1, 1, dtype=torch.float64)  # (1, 1)
    x1 = integrate(_linear(a), x0, None, n_steps=n_steps, method=method)  # (1, 1)
    return abs(x1.item() - math.exp(a))


@pytest.mark.parametrize(("method", "order"), [("euler", 1), ("midpoint", 2), ("rk4", 4)])
def test_error_on_exponential_growth_shrinks_at_the_method_order(method: str, order: int) -> None:
    errors = [_error(method, n) for n in (10, 20, 40)]
    assert errors[0] > errors[1] > errors[2]
    for coarse, fine in zip(errors, errors[1:], strict=False):
        assert coarse / fine == pytest.approx(2**order, rel=0.25)


def test_rk4_is_far_more_accurate_than_euler_at_equal_steps() -> None:
    for n_steps in (5, 20):
        assert _error("rk4", n_steps) < 1e-3 * _error("euler", n_steps)
        assert _error("midpoint", n_steps) < _error("euler", n_steps)


@pytest.mark.parametrize("method", sorted(SOLVERS))
def test_constant_velocity_is_exact(method: str) -> None:
    shift = torch.tensor([[1.0, -2.0, 0.5]])  # (1, 3)
    x0 = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))  # (4, 3)

    def velocity(x, t, condition):
        return condition.expand_as(x)  # (B, D)

    for n_steps in (1, 3):
        x1 = integrate(velocity, x0, shift, n_steps=n_steps, method=method)  # (4, 3)
        torch.testing.assert_close(x1, x0 + shift)
        back = integrate(velocity, x1, shift, n_steps=n_steps, method=method, t0=1.0, t1=0.0)
        torch.testing.assert_close(back, x0)


@pytest.mark.parametrize(
    ("method", "expected"), [("euler", 0.5 - 0.5 / 4), ("midpoint", 0.5), ("rk4", 0.5)]
)
def test_time_is_passed_per_step(method: str, expected: float) -> None:
    """dx/dt = t from 0 to 1 gives 1/2; Euler with 4 steps gives the left Riemann sum 3/8."""

    def velocity(x, t, condition):
        assert t.shape == (x.shape[0],)
        return t[:, None].expand_as(x)  # (B, D)

    x1 = integrate(velocity, torch.zeros(2, 1), None, n_steps=4, method=method)  # (2, 1)
    torch.testing.assert_close(x1, torch.full((2, 1), expected))


def test_trajectory_starts_at_x0_and_ends_at_the_result() -> None:
    x0 = torch.ones(3, 2)  # (3, 2)
    trajectory = integrate(
        _linear(1.0), x0, None, n_steps=5, method="midpoint", return_trajectory=True
    )  # (6, 3, 2)
    assert trajectory.shape == (6, 3, 2)
    torch.testing.assert_close(trajectory[0], x0)
    torch.testing.assert_close(
        trajectory[-1], integrate(_linear(1.0), x0, None, n_steps=5, method="midpoint")
    )


@pytest.mark.parametrize("method", sorted(SOLVERS))
def test_gradients_flow_through_the_integration(method: str) -> None:
    torch.manual_seed(0)
    model = VelocityField(
        latent_dim=3, condition_dim=2, hidden_dim=16, time_dim=8, zero_init_output=False
    )
    x0 = torch.randn(4, 3, requires_grad=True)  # (4, 3)
    condition = torch.randn(4, 2, requires_grad=True)  # (4, 2)
    x1 = integrate(model, x0, condition, n_steps=3, method=method)  # (4, 3)
    x1.pow(2).sum().backward()
    assert x0.grad is not None and torch.count_nonzero(x0.grad) > 0
    assert condition.grad is not None and torch.count_nonzero(condition.grad) > 0
    assert all(p.grad is not None and torch.count_nonzero(p.grad) > 0 for p in model.parameters())


def test_invalid_arguments_are_rejected() -> None:
    x0 = torch.zeros(2, 2)  # (2, 2)
    with pytest.raises(ValueError, match="euler, midpoint, rk4"):
        integrate(_linear(1.0), x0, None, method="dopri5")
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="n_steps"):
            integrate(_linear(1.0), x0, None, n_steps=bad)
