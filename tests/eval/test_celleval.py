"""perturbflow's metrics agree with cell-eval's on identical inputs (synthetic data)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

cell_eval = pytest.importorskip("cell_eval")

from perturbflow.data.conditions import CONTROL_NAME  # noqa: E402
from perturbflow.data.io import CONDITION_COLUMN  # noqa: E402
from perturbflow.eval.celleval import (  # noqa: E402
    CROSSCHECK_COLUMNS,
    CellEvalNotInstalledError,
    celleval_crosscheck,
    to_celleval_pair,
)
from perturbflow.eval.metrics import discrimination_l1  # noqa: E402
from perturbflow.models import get_model  # noqa: E402


@pytest.fixture(scope="module")
def setup(screen_data):
    dataset, split = screen_data("tiny", split="combo", split_seed=1, n_doubles=6)
    singles = [name for name in split.train if name != CONTROL_NAME and "+" not in name]
    # Test doubles plus training singles: singles exercise cell-eval's target-gene exclusion.
    conditions = [*split.test, *singles]
    predictions = get_model("additive").fit(dataset, split).predict(conditions, n_cells=30)
    # Seeded noise so that discrimination ranks are not all perfect.
    rng = np.random.default_rng(0)
    predictions.X = predictions.X + rng.normal(0.0, 0.6, predictions.X.shape).astype(np.float32)
    return dataset, split, conditions, predictions


def test_pair_has_matching_genes_and_the_real_control_cells(setup):
    dataset, _, conditions, predictions = setup
    real, pred = to_celleval_pair(predictions, dataset, conditions)
    assert list(real.var_names) == list(pred.var_names) == list(dataset.genes)
    real_labels = real.obs[CONDITION_COLUMN].astype(str).to_numpy()
    pred_labels = pred.obs[CONDITION_COLUMN].astype(str).to_numpy()
    assert set(real_labels) == set(pred_labels) == {*conditions, CONTROL_NAME}
    control = dataset.control_expression()
    np.testing.assert_array_equal(real.X[real_labels == CONTROL_NAME], control)
    np.testing.assert_array_equal(pred.X[pred_labels == CONTROL_NAME], control)
    # cell-eval validates the pair without complaint.
    pair = cell_eval.PerturbationAnndataPair(
        real=real, pred=pred, pert_col=CONDITION_COLUMN, control_pert=CONTROL_NAME
    )
    assert sorted(pair.perts) == sorted(conditions)


def test_every_overlapping_metric_agrees(setup):
    dataset, split, conditions, predictions = setup
    table = celleval_crosscheck(predictions, dataset, split, seed=3, conditions=conditions)
    assert tuple(table.columns) == CROSSCHECK_COLUMNS
    assert set(table["metric"]) == {"pearson_delta", "mse", "mae", "discrimination_score_l1"}
    assert len(table) == 4 * len(conditions)
    assert (table["model"] == "additive").all() and (table["seed"] == 3).all()
    assert table["note"].notna().all()
    assert np.isfinite(table[["perturbflow", "cell_eval"]].to_numpy()).all()
    worst = table.groupby("metric")["abs_diff"].max()
    assert worst["pearson_delta"] < 1e-5
    assert worst["mse"] < 1e-5
    assert worst["mae"] < 1e-5
    assert worst["discrimination_score_l1"] < 1e-12  # identical ranks after alignment
    discrimination = table.loc[table["metric"] == "discrimination_score_l1", "cell_eval"]
    assert discrimination.min() < 1.0  # the noise makes the check non-trivial


def test_crosscheck_defaults_to_the_split_test_conditions(setup):
    dataset, split, _, predictions = setup
    table = celleval_crosscheck(predictions, dataset, split, model="m")
    assert list(dict.fromkeys(table["condition"])) == list(split.test)
    assert (table["model"] == "m").all()


def test_discrimination_scale_differs_by_c_minus_1_over_c(setup):
    """Documents the definitional difference: cell-eval = 1 - (1 - ours) * (C - 1) / C."""
    dataset, _, conditions, predictions = setup
    real, pred = to_celleval_pair(predictions, dataset, conditions)
    pair = cell_eval.PerturbationAnndataPair(
        real=real, pred=pred, pert_col=CONDITION_COLUMN, control_pert=CONTROL_NAME
    )
    theirs = cell_eval.metrics.discrimination_score(pair, metric="l1")
    names = list(pair.perts)
    n = len(names)
    means = {
        side: np.vstack(
            [
                adata.X[adata.obs[CONDITION_COLUMN].astype(str).to_numpy() == name].mean(
                    axis=0, dtype=np.float64
                )
                for name in names
            ]
        )
        for side, adata in (("real", real), ("pred", pred))
    }
    # cell-eval excludes only the gene named like the condition: singles' targets, not doubles'.
    exclude = np.vstack([real.var_names == name for name in names])
    ours = discrimination_l1(means["pred"], means["real"], exclude)
    theirs = np.array([theirs[name] for name in names])
    np.testing.assert_allclose(theirs, 1.0 - (1.0 - ours) * (n - 1) / n, atol=1e-12)
    assert (ours < 1).any()  # where the scales actually differ


def test_missing_cell_eval_raises_a_clear_import_error(setup, monkeypatch):
    dataset, split, _, predictions = setup
    monkeypatch.setitem(sys.modules, "cell_eval", None)  # makes `import cell_eval` fail
    with pytest.raises(CellEvalNotInstalledError, match=r"pip install perturbflow\[celleval\]"):
        celleval_crosscheck(predictions, dataset, split)
    assert issubclass(CellEvalNotInstalledError, ImportError)
