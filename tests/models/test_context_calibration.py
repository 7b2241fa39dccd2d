"""calibrated_additive on context splits: the transferred change calibrated to the target context."""

from __future__ import annotations

import dataclasses

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from _configs import TINY_SCBIG

from perturbflow.data import read
from perturbflow.data.contexts import cross_cell_line_task
from perturbflow.data.splits import make_split
from perturbflow.models import get_model, load_model
from perturbflow.models.baselines.calibrated import CalibratedAdditiveConfig
from perturbflow.models.baselines.context import ContextCalibration, fit_context_calibration

# Four cells per (condition, line) keep the planted means exact; few cells are the point here.
pytestmark = pytest.mark.filterwarnings("ignore::perturbflow.data.io.SmallConditionWarning")

GENES = [f"G{i}" for i in range(30)]
TARGETS = [f"K{i}" for i in range(8)]  # perturbed genes, not measured (as in mcfaline23)


def planted(transfer: float, mean_weight: float) -> ad.AnnData:
    """Two lines; in line B every knock-out changes ``transfer`` × its line-A change plus
    ``mean_weight`` × a response shared by all of B's knock-outs. Four identical cells per
    (condition, line), so means are exact."""
    rng = np.random.default_rng(0)
    shared = rng.normal(0.0, 1.0, len(GENES))  # (G,)
    effects = {k: rng.normal(0.0, 1.0, len(GENES)) for k in TARGETS}  # line A's changes
    rows, labels, lines = [], [], []
    for line, offset in (("A", 0.0), ("B", 3.0)):
        for name in ["ctrl", *TARGETS]:
            change = np.zeros(len(GENES)) if name == "ctrl" else effects[name]
            if line == "B" and name != "ctrl":
                change = transfer * change + mean_weight * shared
            rows += [offset + 5.0 + change] * 4
            labels += [name] * 4
            lines += [line] * 4
    obs = pd.DataFrame({"condition": labels, "line": lines})
    obs.index = [f"c{i}" for i in range(len(obs))]
    return ad.AnnData(X=np.asarray(rows, np.float32), obs=obs, var=pd.DataFrame(index=GENES))


def task(transfer=0.5, mean_weight=1.0, seed=1):
    dataset = read(planted(transfer, mean_weight), cell_type_key="line")
    return cross_cell_line_task(dataset, seed=seed, target="B", test_fraction=0.25)


def test_planted_transfer_and_context_response_are_recovered():
    fitted = task(transfer=0.5, mean_weight=1.0)
    calibration = fit_context_calibration(fitted.fit, fitted.split)
    split = fitted.split  # B's knock-outs less the held-out and validation ones
    assert calibration.n_conditions == len(set(split.train) - {"ctrl"} - set(split.test)) >= 4
    # Leaving each knock-out out of m_T adds no error here: the shared part is identical in all.
    assert calibration.transfer == pytest.approx(0.5, abs=0.05)
    assert calibration.context_mean > 0.5


def test_calibrated_additive_predicts_the_held_out_line_better_than_the_plain_transfer():
    fitted = task(transfer=0.3, mean_weight=1.0)
    truth = fitted.evaluation.mean_expression(list(fitted.split.test))
    control = fitted.evaluation.control_expression().mean(axis=0)
    errors = {}
    for label, options in (("context", {}), ("plain", {"context": False})):
        model = get_model("calibrated_additive", CalibratedAdditiveConfig(**options)).fit(
            fitted.fit, fitted.split
        )
        predicted = fitted.to_target_line(model.predict(list(fitted.split.test), n_cells=4))
        means = (
            pd.DataFrame(predicted.X, index=predicted.obs["perturbflow_condition"])
            .groupby(level=0, observed=True)
            .mean()
        )
        delta = means.loc[truth.index].to_numpy() - control
        errors[label] = float(np.mean((delta - (truth.to_numpy() - control)) ** 2))
    assert errors["context"] < 0.5 * errors["plain"], errors


def test_other_splits_are_left_alone(screen_data):
    dataset, split = screen_data("tiny")
    assert fit_context_calibration(dataset, split) == ContextCalibration()
    on = get_model("calibrated_additive").fit(dataset, split).predict_delta(list(split.test))
    off = get_model("calibrated_additive", CalibratedAdditiveConfig(context=False))
    off.fit(dataset, split)
    pd.testing.assert_frame_equal(on, off.predict_delta(list(split.test)))


def test_too_few_shared_perturbations_keep_the_transfer():
    fitted = task()
    few = dataclasses.replace(fitted.split, train=("ctrl", *fitted.split.train[1:3]))
    assert fit_context_calibration(fitted.fit, few) == ContextCalibration()


def test_the_calibration_survives_save_and_load(tmp_path):
    fitted = task()
    model = get_model("calibrated_additive").fit(fitted.fit, fitted.split)
    path = model.save(tmp_path / "calibrated.npz")
    loaded = load_model(path)
    test = list(fitted.split.test)
    pd.testing.assert_frame_equal(model.predict_delta(test), loaded.predict_delta(test))
    assert loaded.context_.transfer == model.context_.transfer != 1.0


def test_scbig_with_zero_velocity_predicts_the_context_calibrated_means():
    fitted = task(transfer=0.3, mean_weight=1.0)
    config = dataclasses.replace(
        TINY_SCBIG, flow_steps=2, ae_epochs=0, mean_weight=1.0, shape_weight=1.0
    )
    model = get_model("scbig", config).fit(fitted.fit, fitted.split)
    with torch.no_grad():
        model.velocity_.output.weight.zero_()
        model.velocity_.output.bias.zero_()
    test = list(fitted.split.test)
    expected = get_model("calibrated_additive").fit(fitted.fit, fitted.split).predict_delta(test)
    predicted = model.predict_delta(test, n_cells=16, seed=1)
    np.testing.assert_allclose(predicted.to_numpy(), expected.to_numpy(), atol=2e-5)
    assert model.start_.additive.context_.n_conditions > 0


def test_make_split_still_refuses_context_kinds():
    with pytest.raises(ValueError, match="made from the cells"):
        make_split("cross_context", ["ctrl", "A"], seed=1)


def test_a_transfer_that_already_fits_is_kept_as_it_is():
    """Line B responds exactly as line A: nothing to calibrate, so nothing is changed."""
    fitted = task(transfer=1.0, mean_weight=0.0)
    assert fit_context_calibration(fitted.fit, fitted.split) == ContextCalibration()
