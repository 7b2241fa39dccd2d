"""Flow-matching pieces on closed-form cases, ending with a learned flow between two Gaussians."""

from __future__ import annotations

import pytest
import torch

from perturbflow.models.flow import (
    VelocityField,
    flow_matching_loss,
    integrate,
    interpolate,
    ot_pair,
    sample_time,
    target_velocity,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_sample_time_is_uniform_on_the_unit_interval_and_seeded() -> None:
    t = sample_time(5000, generator=_gen(0))  # (5000,)
    assert t.shape == (5000,)
    assert t.min() >= 0.0 and t.max() <= 1.0
    assert t.mean().item() == pytest.approx(0.5, abs=0.02)
    assert torch.equal(sample_time(7, generator=_gen(1)), sample_time(7, generator=_gen(1)))
    assert sample_time(3, dtype=torch.float64).dtype == torch.float64


def test_interpolate_hits_the_endpoints_and_the_midpoint() -> None:
    g = _gen(2)
    x0 = torch.randn(4, 3, generator=g)  # (4, 3)
    x1 = torch.randn(4, 3, generator=g)  # (4, 3)
    torch.testing.assert_close(interpolate(x0, x1, torch.zeros(4)), x0)
    torch.testing.assert_close(interpolate(x0, x1, torch.ones(4)), x1)
    torch.testing.assert_close(interpolate(x0, x1, torch.tensor(0.5)), (x0 + x1) / 2)
    t = torch.tensor([0.0, 0.25, 0.5, 1.0])  # (4,)
    torch.testing.assert_close(interpolate(x0, x1, t), x0 + t[:, None] * (x1 - x0))


def test_interpolate_noise_is_explicit() -> None:
    x0 = torch.zeros(3, 2)  # (3, 2)
    x1 = torch.ones(3, 2)  # (3, 2)
    noise = torch.full((3, 2), 2.0)  # (3, 2)
    torch.testing.assert_close(
        interpolate(x0, x1, torch.zeros(3), sigma=0.1, noise=noise), 0.2 * torch.ones(3, 2)
    )
    drawn = interpolate(x0, x1, torch.zeros(3), sigma=0.1, generator=_gen(3))  # (3, 2)
    again = interpolate(x0, x1, torch.zeros(3), sigma=0.1, generator=_gen(3))  # (3, 2)
    assert torch.equal(drawn, again) and not torch.equal(drawn, x0)
    with pytest.raises(ValueError, match="generator"):
        interpolate(x0, x1, torch.zeros(3), sigma=0.1)
    with pytest.raises(ValueError, match="shape"):
        interpolate(x0, x1, torch.zeros(2))


def test_target_velocity_is_the_displacement() -> None:
    x0 = torch.tensor([[1.0, 2.0]])  # (1, 2)
    x1 = torch.tensor([[4.0, -1.0]])  # (1, 2)
    torch.testing.assert_close(target_velocity(x0, x1), torch.tensor([[3.0, -3.0]]))


def test_loss_is_zero_for_the_exact_velocity_and_positive_otherwise() -> None:
    g = _gen(4)
    x0 = torch.randn(16, 3, generator=g)  # (16, 3)
    x1 = torch.randn(16, 3, generator=g)  # (16, 3)
    displacement = x1 - x0  # (16, 3) used as the "condition" the exact model reads

    def exact(x_t, t, condition):
        return condition  # (B, D)

    def still(x_t, t, condition):
        return torch.zeros_like(x_t)  # (B, D)

    for sigma in (0.0, 0.1):
        loss = flow_matching_loss(exact, x0, x1, displacement, sigma=sigma, generator=_gen(0))
        assert loss.item() == pytest.approx(0.0, abs=1e-12)
    t = sample_time(16, generator=_gen(5))  # (16,)
    loss = flow_matching_loss(still, x0, x1, displacement, t=t)
    assert loss.item() == pytest.approx((displacement**2).mean().item())


def test_loss_trains_a_velocity_field() -> None:
    torch.manual_seed(0)
    model = VelocityField(latent_dim=3, condition_dim=2, hidden_dim=16, time_dim=8)
    g = _gen(6)
    x0 = torch.randn(8, 3, generator=g)  # (8, 3)
    x1 = torch.randn(8, 3, generator=g)  # (8, 3)
    condition = torch.randn(8, 2, generator=g)  # (8, 2)
    loss = flow_matching_loss(model, x0, x1, condition, generator=_gen(0))
    loss.backward()
    assert loss.ndim == 0
    assert torch.count_nonzero(model.output.weight.grad) > 0


def test_learned_ot_flow_between_gaussians_matches_the_closed_form_map() -> None:
    """N(0, I) -> N(mu, diag(s^2)) in 2-D: the OT map is x -> mu + s * x.

    With minibatch OT pairing the learned flow is nearly straight, so even one Euler step lands
    close to the map (an independent coupling collapses one-step samples towards ``mu``).
    """
    torch.manual_seed(0)
    g = _gen(0)
    mu = torch.tensor([2.0, -1.0])  # (2,)
    s = torch.tensor([0.5, 1.5])  # (2,)
    model = VelocityField(latent_dim=2, condition_dim=0, hidden_dim=64, dropout=0.0, time_dim=16)
    n_steps, batch_size = 300, 128
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: 1 - step / n_steps)
    no_condition = torch.zeros(batch_size, 0)  # (B, 0)
    for _ in range(n_steps):
        source = torch.randn(batch_size, 2, generator=g)  # (B, 2)
        target = mu + s * torch.randn(batch_size, 2, generator=g)  # (B, 2)
        pairing = ot_pair(source, target)
        loss = flow_matching_loss(model, pairing.x0, pairing.x1, no_condition, generator=g)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()

    model.eval()
    fresh = torch.randn(2000, 2, generator=_gen(1))  # (N, 2)
    closed_form = mu + s * fresh  # (N, 2)
    with torch.no_grad():
        transported = integrate(model, fresh, None, n_steps=20, method="midpoint")  # (N, 2)
        one_step = integrate(model, fresh, None, n_steps=1, method="euler")  # (N, 2)
    torch.testing.assert_close(transported.mean(0), mu, atol=0.15, rtol=0.0)
    torch.testing.assert_close(transported.std(0), s, atol=0.15, rtol=0.0)
    assert (transported - closed_form).abs().mean() < 0.3
    assert (one_step - closed_form).abs().mean() < 0.3
