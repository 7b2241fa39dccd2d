"""scbig's batched prediction against its per-condition definition.

``predict`` moves every condition's cells in blocks of conditions: one call to the start model
and one condition encoding for all of them, the flow integrated over all moved cells together,
conditions whose weights keep nothing of the flow not integrated at all. The reference below is
the definition for one condition at a time, written out with the model's own parts.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _configs import FAST_CONFIGS

from perturbflow.data.conditions import CONTROL_NAME, parse_condition
from perturbflow.models.baselines.context import ContextCalibration
from perturbflow.models.baselines.mean_shift import recentre
from perturbflow.models.flow import integrate
from perturbflow.models.scbig import ScBIG
from perturbflow.models.scbig import model as scbig_model
from perturbflow.models.scbig.model import CONDITION_KINDS, _PresetVelocity, condition_kind

# Batched and per-condition paths add the same float32 terms, but matrix products over
# different numbers of rows (and the first layer split into its parts) round differently: a
# few float32 ulps of values of order 1-10.
ATOL = 1e-5


@pytest.fixture(scope="module")
def data(screen_data):
    return screen_data("tiny")


@pytest.fixture(scope="module")
def fitted(data):
    dataset, split = data
    return ScBIG(FAST_CONFIGS["scbig"]).fit(dataset, split)


def _reference(model: ScBIG, name: str, rows: np.ndarray) -> np.ndarray:
    """Predicted cells ``(n, G)`` of ``name`` from control rows ``rows``, one condition alone."""
    source = recentre(model.control_cells_[rows], model.control_mean_)  # (n, G)
    if name == CONTROL_NAME:
        return source
    start = source + model.start_.shifts([name], in_context=True)  # (n, G)
    with torch.no_grad():
        latent = model.autoencoder_.encode(torch.from_numpy(start))  # (n, L)
        condition = model.condition_model_.encode([name]).expand(len(rows), -1)  # (n, E)
        moved = integrate(
            model.velocity_,
            latent,
            condition,
            n_steps=model.config.ode_steps,
            method=model.config.ode_method,
        )  # (n, L)
        change = (model.autoencoder_.decode(moved) - model.autoencoder_.decode(latent)).numpy()
    kind = condition_kind(name, model.start_.seen)
    offset = np.zeros(len(model.genes_), np.float32)  # (G,)
    if len(parse_condition(name)) > 1:
        context = model.start_.additive.context_
        combined = context.apply(model.start_.combinator.shifts([name])[0])  # (G,)
        offset = combined - context.apply(model.start_.additive.estimator_.shifts([name])[0])
    mean_change = change.mean(axis=0, keepdims=True)  # (1, G)
    return (
        start
        + model.combinator_weights_[kind] * offset
        + model.mean_weights_[kind] * mean_change
        + model.shape_weights_[kind] * (change - mean_change)
    )


def _names(data) -> list[str]:
    """Control, seen and unseen singles, and combinations of every kind the split has."""
    _, split = data
    singles = [name for name in split.train if name != CONTROL_NAME and "+" not in name]
    doubles = [name for name in split.train if "+" in name]
    return [CONTROL_NAME, *singles[:2], *doubles[:1], *split.test]


def _assert_matches_definition(model: ScBIG, names: list[str], n_cells: int, seed: int) -> None:
    predicted = model.predict(names, n_cells=n_cells, seed=seed)
    generator = np.random.default_rng(seed)  # one draw per condition, in the given order
    n_control = len(model.control_cells_)
    for name in names:
        rows = generator.choice(n_control, n_cells, replace=n_cells > n_control)
        cells = np.asarray(predicted[predicted.obs["perturbflow_condition"] == name].X)
        np.testing.assert_allclose(cells, _reference(model, name, rows), rtol=0, atol=ATOL)


@pytest.mark.parametrize("weights", ["cross-validated", "every kind moved"])
def test_batched_prediction_is_the_per_condition_definition(fitted, data, weights, monkeypatch):
    names = _names(data)
    kinds = {condition_kind(name, fitted.start_.seen) for name in names[1:]}
    assert kinds >= {"seen_single", "unseen_single", "combo_seen1", "combo_seen2"}
    if weights == "every kind moved":
        monkeypatch.setattr(fitted, "mean_weights_", dict.fromkeys(CONDITION_KINDS, 0.75))
        monkeypatch.setattr(fitted, "shape_weights_", dict.fromkeys(CONDITION_KINDS, 1.5))
        monkeypatch.setattr(fitted, "combinator_weights_", dict.fromkeys(CONDITION_KINDS, 0.5))
    else:  # the fold leaves some kinds unmoved: those skip the flow
        assert 0.0 in {fitted.mean_weights_[k] + fitted.shape_weights_[k] for k in kinds}
    # Blocks of three conditions and a shorter last one.
    monkeypatch.setattr(scbig_model, "_PREDICT_ROWS", 21)
    assert len(names) % 3
    _assert_matches_definition(fitted, names, n_cells=7, seed=3)


def test_more_cells_than_stored_controls_and_a_context_calibration(fitted, data, monkeypatch):
    # A target-context calibration moves the start and the combinator offsets of every row.
    rng = np.random.default_rng(0)
    context = ContextCalibration(0.6, 0.4, rng.normal(size=len(fitted.genes_)), n_conditions=5)
    monkeypatch.setattr(fitted.start_.additive, "context_", context)
    monkeypatch.setattr(fitted, "mean_weights_", dict.fromkeys(CONDITION_KINDS, 1.0))
    monkeypatch.setattr(fitted, "shape_weights_", dict.fromkeys(CONDITION_KINDS, 0.5))
    monkeypatch.setattr(fitted, "combinator_weights_", dict.fromkeys(CONDITION_KINDS, 0.25))
    names = _names(data)[:4]
    n_cells = len(fitted.control_cells_) + 10  # drawn with replacement
    _assert_matches_definition(fitted, names, n_cells=n_cells, seed=0)


def test_same_seed_same_cells_in_any_block_size(fitted, data, monkeypatch):
    names = _names(data)
    whole = fitted.predict(names, n_cells=6, seed=1).X
    monkeypatch.setattr(scbig_model, "_PREDICT_ROWS", 1)  # one condition per block
    np.testing.assert_allclose(fitted.predict(names, n_cells=6, seed=1).X, whole, atol=ATOL)
    assert not np.allclose(fitted.predict(names, n_cells=6, seed=2).X, whole)


def test_preset_velocity_is_the_velocity_field(fitted):
    velocity = fitted.velocity_
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(9, velocity.config.latent_dim, generator=generator)  # (B, D)
    condition = torch.randn(3, velocity.config.condition_dim, generator=generator)  # (C, E)
    rows = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    t = torch.full((9,), 0.35)
    field = _PresetVelocity(velocity)
    with torch.no_grad():
        expected = velocity(x, t, condition[rows])  # (B, D)
        got = field(x, t, field.preset(condition)[rows])  # (B, D)
    assert expected.abs().max() > 1e-3  # the trained field is not zero
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
