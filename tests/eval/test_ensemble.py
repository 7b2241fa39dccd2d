"""An ensemble fits one model per seed; the bootstrap gives deterministic models a spread."""

from __future__ import annotations

import numpy as np
import pytest

from perturbflow.eval.ensemble import fit_ensemble, resample_cells
from perturbflow.eval.loop import RunSpec


def test_bootstrap_keeps_cell_counts_and_draws_from_each_condition(screen_data):
    dataset, _ = screen_data()
    replicate = resample_cells(dataset, seed=3)
    assert replicate.cells_per_condition.equals(dataset.cells_per_condition)
    assert replicate.adata.obs_names.is_unique
    name = dataset.perturbations[0]
    original = {tuple(row) for row in dataset.expression(name)}
    assert {tuple(row) for row in replicate.expression(name)} <= original


def test_seeds_alone_leave_a_deterministic_model_without_spread_and_bootstrap_adds_it(
    screen_data,
):
    dataset, split = screen_data()
    spec = RunSpec("ridge", "ridge", {"n_components": 4})
    test = list(split.test)
    fixed = fit_ensemble(dataset, split, spec, test, seeds=(0, 1), n_cells=20)
    assert len(fixed.members) == 2 and fixed.resampling_sd is None
    assert list(fixed.members[0].index) == test
    # float32 cells: the same delta up to rounding
    np.testing.assert_allclose(fixed.members[0].to_numpy(), fixed.members[1].to_numpy(), atol=1e-5)
    booted = fit_ensemble(dataset, split, spec, test, seeds=(0, 1), n_cells=20, bootstrap=True)
    assert booted.bootstrap
    assert not np.allclose(booted.members[0].to_numpy(), booted.members[1].to_numpy())


def test_draws_give_a_resampling_spread_and_bad_sizes_are_refused(screen_data):
    dataset, split = screen_data()
    spec = RunSpec("additive", "additive")
    test = list(split.test)[:3]
    ensemble = fit_ensemble(dataset, split, spec, test, seeds=(0, 1), n_cells=20, draws=2)
    assert ensemble.resampling_sd is not None
    assert ensemble.resampling_sd.shape == (3, dataset.n_genes)
    with pytest.raises(ValueError, match="at least 2 seeds"):
        fit_ensemble(dataset, split, spec, test, seeds=(0,))
    with pytest.raises(ValueError, match="draws must be at least 1"):
        fit_ensemble(dataset, split, spec, test, draws=0)
