"""Tests for perturbflow.data.contexts: line centring and the cross-cell-line task."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest

from perturbflow.data import read
from perturbflow.data.contexts import (
    CENTRING_KEY,
    CONTROL_MEAN_KEY,
    ContextError,
    centre_by_context,
    check_no_context_leakage,
    cross_cell_line_task,
    rotate_target,
)
from perturbflow.data.splits import Split, SplitLeakageError, cross_cell_line_split, make_split
from perturbflow.eval.evaluate import evaluate
from perturbflow.models.base import get_model

LINES = ("L1", "L2", "L3")


@pytest.fixture(scope="module")
def base(simulated_screen) -> ad.AnnData:
    """Singles only, 60 cells each (the suite's tiny screen otherwise)."""
    return simulated_screen(
        "tiny", n_perturbed=6, n_doubles=0, n_control_cells=150, n_cells_per_condition=60
    )


def multi_line(base: ad.AnnData, *, replicate: bool) -> ad.AnnData:
    """The screen ``base`` in three lines that differ only by a constant offset per gene.

    ``replicate=True``: every line holds a copy of every cell, so the lines are identical once
    centred. ``False``: each condition's cells are dealt to the lines in turn (shared effects,
    independent noise).
    """
    offsets = np.random.default_rng(1).uniform(0.0, 2.0, (len(LINES), base.n_vars))  # (L, G)
    if replicate:
        parts = []
        for i, line in enumerate(LINES):
            part = ad.AnnData(X=base.X + offsets[i], obs=base.obs.copy(), var=base.var.copy())
            part.obs["cell_type"] = line
            part.obs_names = [f"{line}_{name}" for name in base.obs_names]
            parts.append(part)
        return ad.concat(parts, merge="same")
    turn = base.obs.groupby("condition", observed=True).cumcount().to_numpy() % len(LINES)
    adata = ad.AnnData(
        X=base.X + offsets[turn], obs=base.obs.copy(), var=base.var.copy(), layers=base.layers
    )
    adata.obs["cell_type"] = np.asarray(LINES)[turn]
    return adata


@pytest.fixture(scope="module")
def dealt(base):
    return read(multi_line(base, replicate=False), cell_type_key="cell_type")


@pytest.fixture(scope="module")
def replicated(base):
    return read(multi_line(base, replicate=True), cell_type_key="cell_type")


def line_mask(dataset, line: str) -> np.ndarray:
    return (dataset.adata.obs["cell_type"] == line).to_numpy()


# --- centring ---------------------------------------------------------------------------------


def test_centring_zeroes_each_line_control_mean_and_keeps_its_deltas(dealt):
    centred = centre_by_context(dealt)
    control = (centred.condition_labels == "ctrl").to_numpy()
    for line in LINES:
        rows = line_mask(centred, line)
        assert np.abs(centred.adata.X[rows & control].mean(axis=0)).max() < 1e-5
        # Within a line, every cell moved by the same vector: deltas are those of the original.
        shift = np.asarray(dealt.adata.X)[rows] - centred.adata.X[rows]  # (n, G)
        np.testing.assert_allclose(shift, np.broadcast_to(shift[0], shift.shape), atol=1e-5)


def test_centring_records_how_it_was_made(dealt):
    before = np.asarray(dealt.adata.X).copy()
    centred = centre_by_context(dealt)
    info = centred.adata.uns["perturbflow"][CENTRING_KEY]
    assert info["cell_type_key"] == "cell_type" and info["lines"] == list(LINES)
    means = centred.adata.varm[CONTROL_MEAN_KEY]
    assert list(means.columns) == list(LINES)
    rows = line_mask(dealt, "L2") & (dealt.condition_labels == "ctrl").to_numpy()
    np.testing.assert_allclose(means["L2"], np.asarray(dealt.adata.X)[rows].mean(axis=0), atol=1e-5)
    assert "counts" not in centred.adata.layers
    assert "counts" in dealt.adata.layers  # the input is never modified
    np.testing.assert_array_equal(np.asarray(dealt.adata.X), before)


# --- the task ---------------------------------------------------------------------------------


def test_target_line_rotates_with_the_seed(dealt):
    targets = [
        cross_cell_line_task(dealt, seed=seed).split.params["target_line"] for seed in range(1, 5)
    ]
    assert targets == ["L1", "L2", "L3", "L1"]
    assert rotate_target(["b", "a"], 1) == "a"


def test_held_out_cells_are_evaluated_and_never_fitted(dealt):
    fit, evaluation, split, _ = cross_cell_line_task(dealt, seed=2, test_fraction=0.5)
    target = split.params["target_line"]
    labels = dealt.condition_labels
    held_out = line_mask(dealt, target) & labels.isin(split.test).to_numpy()
    held_out_cells = set(dealt.adata.obs_names[held_out])
    assert held_out_cells
    assert held_out_cells.isdisjoint(fit.adata.obs_names)
    assert held_out_cells <= set(evaluation.adata.obs_names)
    assert set(fit.adata.obs_names) | held_out_cells == set(dealt.adata.obs_names)
    # Evaluation: the target line's real control and held-out cells, nothing else.
    assert set(evaluation.adata.obs["cell_type"]) == {target}
    assert set(evaluation.conditions) == {"ctrl", *split.test}
    np.testing.assert_array_equal(
        np.asarray(evaluation.adata.X), np.asarray(dealt.adata[evaluation.adata.obs_names].X)
    )
    # Test names train on the other lines' cells; validation is apart from both.
    assert set(split.test) <= set(split.train)
    assert set(split.val).isdisjoint(split.train) and set(split.val).isdisjoint(split.test)
    assert len(split.test) == 3  # half of 6, rounded half up
    assert set(split.test_subgroups()) == {f"cross_line_{target}"}
    check_no_context_leakage(fit, split)


def test_a_fixed_target_and_full_hold_out(dealt):
    fit, _, split, _ = cross_cell_line_task(dealt, seed=1, target="L3", test_fraction=1.0)
    assert split.params["target_line"] == "L3"
    assert set(split.test) == set(dealt.perturbations)
    assert set(fit.adata.obs.loc[line_mask(fit, "L3"), "cell_type"]) == {"L3"}
    assert set(fit.condition_labels[line_mask(fit, "L3")]) == {"ctrl"}


def test_task_is_deterministic_and_its_split_round_trips(dealt, tmp_path):
    split = cross_cell_line_task(dealt, seed=3).split
    assert cross_cell_line_task(dealt, seed=3).split == split
    assert Split.from_dict(split.to_dict()) == split
    assert Split.load(split.save(tmp_path / "split.json")) == split
    assert split.params == {
        "cell_type_key": "cell_type",
        "target_line": "L3",
        "lines": list(LINES),
        "test_fraction": 0.5,
        "val_fraction": 0.1,
    }


def test_split_does_not_depend_on_cell_order(dealt):
    shuffled = dealt.adata[np.random.default_rng(0).permutation(dealt.adata.n_obs)]
    again = read(shuffled.copy(), cell_type_key="cell_type")
    for seed in (1, 2, 3):
        assert (
            cross_cell_line_task(again, seed=seed).split
            == cross_cell_line_task(dealt, seed=seed).split
        )


def test_context_leakage_is_caught_at_the_cell_level(dealt):
    split = cross_cell_line_task(dealt, seed=1).split
    with pytest.raises(SplitLeakageError, match="target line 'L1'"):
        check_no_context_leakage(centre_by_context(dealt), split)


def test_context_split_rules():
    split = cross_cell_line_split(
        ["ctrl", "A", "B", "C"], ["ctrl", "A", "B"], seed=0, cell_type_key="c", target_line="T"
    )
    assert split.kind == "cross_cell_line" and len(split.test) == 1
    with pytest.raises(ValueError, match="must record"):
        Split("cross_cell_line", 0, ("ctrl", "A"), (), ("A",), {"A": "x"})
    params = {"cell_type_key": "c", "target_line": "T"}
    with pytest.raises(SplitLeakageError, match="also in val"):
        Split("cross_cell_line", 0, ("ctrl", "A"), ("B",), ("B",), {"B": "x"}, params)
    with pytest.raises(SplitLeakageError, match="also in train"):
        Split("cross_cell_line", 0, ("ctrl", "A"), ("A",), ("B",), {"A": "v", "B": "x"}, params)


def test_make_split_points_to_the_task():
    with pytest.raises(ValueError, match="cross_cell_line_task"):
        make_split("cross_cell_line", ["ctrl", "A", "B"], seed=1)


# --- errors -----------------------------------------------------------------------------------


def test_clear_errors(base, dealt):
    plain = read(multi_line(base, replicate=False))
    with pytest.raises(ContextError, match="no cell-type column"):
        cross_cell_line_task(plain, seed=1)
    with pytest.raises(ContextError, match="no cell-type column 'line'"):
        centre_by_context(dealt, key="line")
    one_line = multi_line(base, replicate=False)
    one_line.obs["cell_type"] = "L1"
    with pytest.raises(ContextError, match="at least 2 contexts"):
        cross_cell_line_task(read(one_line, cell_type_key="cell_type"), seed=1)
    no_control = multi_line(base, replicate=False)
    no_control = no_control[
        ~((no_control.obs["cell_type"] == "L2") & (no_control.obs["condition"] == "ctrl"))
    ]
    with pytest.raises(ContextError, match=r"\['L2'\].*no control"):
        centre_by_context(read(no_control, cell_type_key="cell_type"))
    with pytest.raises(ContextError, match="target line 'L9'"):
        cross_cell_line_task(dealt, seed=1, target="L9")


# --- reference case ---------------------------------------------------------------------------


def test_predictions_move_into_the_target_line(dealt):
    task = cross_cell_line_task(dealt, seed=1)
    model = get_model("control_mean").fit(task.fit, task.split)
    n_control = len(task.fit.control_expression())
    # All stored (centred) control cells once each: their mean is zero before the move.
    moved = task.to_target_line(model.predict(task.split.test[:1], n_cells=n_control))
    target_control = task.evaluation.control_expression().mean(axis=0)
    np.testing.assert_allclose(np.asarray(moved.X).mean(axis=0), target_control, atol=1e-4)
    assert moved.uns["perturbflow"]["moved_to_line"] == "L1"
    np.testing.assert_allclose(task.target_offset, target_control, atol=1e-5)


def test_offset_only_lines_transfer_exactly(replicated):
    """Lines differing by a constant offset: the centred additive transfer is the truth."""
    task = cross_cell_line_task(replicated, seed=2)
    fit, evaluation, split = task.fit, task.evaluation, task.split
    model = get_model("additive").fit(fit, split)
    truth = evaluation.mean_expression(split.test) - evaluation.control_expression().mean(axis=0)
    np.testing.assert_allclose(model.predict_delta(split.test), truth, atol=1e-5)
    # All stored control cells once each: the predicted pseudobulk is control mean + delta.
    n_control = len(fit.control_expression())
    predictions = task.to_target_line(model.predict(split.test, n_cells=n_control, seed=0))
    scores = evaluate(predictions, evaluation, split, model="additive", seed=2)
    values = scores.pivot_table(index="condition", columns="metric", values="value")
    assert values["pearson_delta"].min() > 0.9999
    assert values["mse_de20"].max() < 1e-8
    # Without centring the same pooled means are off by the lines' offsets.
    raw_target = replicated.adata[line_mask(replicated, "L2")]
    raw_other = replicated.adata[~line_mask(replicated, "L2")]
    name = split.test[0]
    naive = np.asarray(raw_other[raw_other.obs["condition"] == name].X).mean(axis=0)
    truth = np.asarray(raw_target[raw_target.obs["condition"] == name].X).mean(axis=0)
    assert np.abs(naive - truth).mean() > 0.1
