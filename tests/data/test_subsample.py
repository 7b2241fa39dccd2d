"""Fewer training cells per condition: test and control cells stay whole, training is capped."""

from __future__ import annotations

import numpy as np
import pytest

from perturbflow.data.conditions import CONTROL_NAME
from perturbflow.data.subsample import (
    TrainCellsError,
    parse_train_cells,
    subsample_training_cells,
    train_cells_label,
)


@pytest.fixture(scope="module")
def case(screen_data):
    return screen_data("tiny", split="combo", split_seed=1)


def _cells(dataset, names) -> set[str]:
    return set(dataset.adata.obs_names[dataset.cell_mask(list(names))])


def test_training_conditions_are_capped_and_test_and_control_cells_are_identical(case):
    dataset, split = case
    small = subsample_training_cells(dataset, split, 7, seed=0)
    counts = small.cells_per_condition
    training = [n for n in (*split.train, *split.val) if n != CONTROL_NAME]
    assert (counts[training] == 7).all()  # the tiny screen has 30 cells per condition
    whole = [CONTROL_NAME, *split.test]
    assert _cells(small, whole) == _cells(dataset, whole)
    test_rows = small.adata[small.cell_mask(list(split.test))]
    original = dataset.adata[dataset.cell_mask(list(split.test))]
    np.testing.assert_array_equal(np.asarray(test_rows.X), np.asarray(original.X))
    assert small.adata.uns["perturbflow"]["train_cells"] == {"n_cells_per_condition": 7, "seed": 0}
    assert "train_cells" not in dataset.adata.uns["perturbflow"]  # the input is not changed


def test_a_cap_above_the_cells_of_a_condition_keeps_them_all(case):
    dataset, split = case
    assert subsample_training_cells(dataset, split, 1000, seed=0).adata.n_obs == dataset.adata.n_obs


def test_the_seed_reproduces_the_draw_and_levels_are_nested(case):
    dataset, split = case
    training = [n for n in split.train if n != CONTROL_NAME]
    first = _cells(subsample_training_cells(dataset, split, 5, seed=3), training)
    assert first == _cells(subsample_training_cells(dataset, split, 5, seed=3), training)
    assert first != _cells(subsample_training_cells(dataset, split, 5, seed=4), training)
    assert first <= _cells(subsample_training_cells(dataset, split, 12, seed=3), training)


@pytest.mark.parametrize("level", [None, "all", "ALL"])
def test_all_cells_is_the_dataset_itself(case, level):
    dataset, split = case
    assert subsample_training_cells(dataset, split, level, seed=0) is dataset


@pytest.mark.parametrize("level", [0, -3, "0", "abc", 2.5, True, ""])
def test_a_level_that_is_not_a_positive_count_is_refused(case, level):
    dataset, split = case
    with pytest.raises(TrainCellsError, match=repr(level) if level != "" else "''"):
        subsample_training_cells(dataset, split, level, seed=0)


def test_levels_parse_in_order_without_duplicates():
    assert parse_train_cells("10, 25,all,10") == (10, 25, None)
    assert parse_train_cells([50, "all", None]) == (50, None)
    assert [train_cells_label(level) for level in (10, None)] == ["10", "all"]
    with pytest.raises(TrainCellsError, match="at least one"):
        parse_train_cells([])
    with pytest.raises(TrainCellsError, match="'x'"):
        parse_train_cells("10,x")
