"""The velocity field module: shapes, determinism, configuration and the time embedding."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from perturbflow.models.flow import TimeEmbedding, VelocityConfig, VelocityField


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _inputs(batch_size: int = 5, latent_dim: int = 4, condition_dim: int = 3, seed: int = 0):
    g = _gen(seed)
    x_t = torch.randn(batch_size, latent_dim, generator=g)  # (B, D)
    t = torch.rand(batch_size, generator=g)  # (B,)
    condition = torch.randn(batch_size, condition_dim, generator=g)  # (B, C)
    return x_t, t, condition


def test_output_has_the_latent_shape() -> None:
    torch.manual_seed(0)
    model = VelocityField(latent_dim=4, condition_dim=3, hidden_dim=32, n_layers=3, time_dim=8)
    x_t, t, condition = _inputs()
    assert model(x_t, t, condition).shape == (5, 4)
    assert model(x_t, torch.tensor(0.3), condition).shape == (5, 4)  # scalar time
    assert len([m for m in model.hidden if isinstance(m, torch.nn.Linear)]) == 3


def test_zero_initialised_output_starts_at_zero_velocity() -> None:
    torch.manual_seed(0)
    model = VelocityField(latent_dim=4, condition_dim=3, hidden_dim=32)
    x_t, t, condition = _inputs()
    assert torch.equal(model(x_t, t, condition), torch.zeros(5, 4))


def test_eval_mode_is_deterministic_and_train_mode_uses_dropout() -> None:
    torch.manual_seed(0)
    model = VelocityField(
        latent_dim=4, condition_dim=3, hidden_dim=64, dropout=0.5, zero_init_output=False
    )
    x_t, t, condition = _inputs()
    model.eval()
    assert torch.equal(model(x_t, t, condition), model(x_t, t, condition))
    model.train()
    assert not torch.equal(model(x_t, t, condition), model(x_t, t, condition))


def test_output_depends_on_time_and_condition() -> None:
    torch.manual_seed(0)
    model = VelocityField(latent_dim=4, condition_dim=3, hidden_dim=32, zero_init_output=False)
    model.eval()
    x_t, t, condition = _inputs()
    base = model(x_t, t, condition)  # (B, D)
    assert not torch.allclose(base, model(x_t, 1.0 - t, condition))
    assert not torch.allclose(base, model(x_t, t, -condition))


def test_unconditional_field_accepts_no_condition() -> None:
    torch.manual_seed(0)
    model = VelocityField(latent_dim=2, condition_dim=0, hidden_dim=16, zero_init_output=False)
    model.eval()
    x_t, t, _ = _inputs(latent_dim=2)
    torch.testing.assert_close(model(x_t, t, None), model(x_t, t, torch.zeros(5, 0)))
    conditional = VelocityField(latent_dim=2, condition_dim=3, hidden_dim=16)
    with pytest.raises(ValueError, match="condition"):
        conditional(x_t, t, None)


def test_config_is_frozen_validated_and_rebuilds_the_module() -> None:
    model = VelocityField(latent_dim=4, condition_dim=3, hidden_dim=32, time_dim=9)
    config = model.config
    assert config == VelocityConfig(latent_dim=4, condition_dim=3, hidden_dim=32, time_dim=9)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.hidden_dim = 8  # type: ignore[misc]
    rebuilt = VelocityField.from_config(config)
    rebuilt.load_state_dict(model.state_dict())
    assert rebuilt.config == config
    defaults = VelocityConfig(latent_dim=50, condition_dim=256)
    assert (defaults.hidden_dim, defaults.n_layers, defaults.dropout) == (1024, 2, 0.1)
    for bad in (dict(latent_dim=0), dict(dropout=1.0), dict(time_dim=1), dict(condition_dim=-1)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            VelocityConfig(**{"latent_dim": 4, "condition_dim": 3, **bad})


@pytest.mark.parametrize("dim", [8, 9])
def test_time_embedding_is_bounded_and_separates_times(dim: int) -> None:
    embedding = TimeEmbedding(dim)
    t = torch.linspace(0, 1, 11)  # (11,)
    features = embedding(t)  # (11, dim)
    assert features.shape == (11, dim)
    assert features.abs().max() <= 1.0
    distances = torch.cdist(features, features)  # (11, 11)
    assert torch.all(distances + torch.eye(11) > 1e-3)  # distinct times, distinct features
    with pytest.raises(ValueError, match="at least 2"):
        TimeEmbedding(1)
