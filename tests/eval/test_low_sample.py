"""The run loop with train_cells levels: one set of rows per level, same test cells, resume."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from perturbflow.data import read
from perturbflow.eval import loop as run_module
from perturbflow.eval.loop import model_runs, run

SMALL = dict(n_genes=50, n_doubles=10, n_control_cells=150, n_cells_per_condition=20)


@pytest.fixture(scope="module")
def dataset(simulated_screen):
    return read(simulated_screen("tiny", **SMALL))


@pytest.fixture(autouse=True)
def no_crosscheck(monkeypatch):
    """cell-eval's cross-check (when installed) is tested with the loop, not per level."""
    monkeypatch.setattr(run_module, "_crosscheck", lambda *args: None)


def test_each_level_writes_its_own_rows_and_resume_fits_only_new_levels(
    dataset, tmp_path, monkeypatch
):
    run(dataset, "combo", model_runs("additive"), [1], out=tmp_path, train_cells=[5])
    fitted = []
    original = run_module.get_model

    def counting(name, config=None):
        fitted.append(name)
        return original(name, config)

    monkeypatch.setattr(run_module, "get_model", counting)
    result = run(
        dataset,
        "combo",
        model_runs("additive"),
        [1],
        out=tmp_path,
        resume=True,
        train_cells="5,all",
    )
    assert fitted == ["additive"]  # only the new level; level 5 came from results.csv
    results = pd.read_csv(tmp_path / "results.csv")
    assert list(results.columns[-1:]) == ["train_cells"]
    per_level = {
        level: rows.drop(columns="train_cells").sort_values(["model", "condition", "metric"])
        for level, rows in results.groupby("train_cells")
    }
    assert sorted(per_level) == ["5", "all"]
    five, every = per_level["5"], per_level["all"]
    assert len(five) == len(every)
    assert set(zip(five["model"], five["condition"], strict=True)) == set(
        zip(every["model"], every["condition"], strict=True)
    )
    # The ceiling depends only on the test cells; the baseline on the training cells.
    ceiling = "model == 'noise_ceiling'"
    pd.testing.assert_frame_equal(
        five.query(ceiling).reset_index(drop=True), every.query(ceiling).reset_index(drop=True)
    )
    additive = "model == 'additive' and metric == 'mse_de20'"
    assert not five.query(additive)["value"].equals(every.query(additive)["value"])
    assert set(result.summary["train_cells"]) == {"5", "all"}
    assert set(pd.read_csv(tmp_path / "timings.csv")["train_cells"].astype(str)) == {"5", "all"}
    assert json.loads((tmp_path / "runs.json").read_text())["additive"]["train_cells"] == [
        "5",
        "all",
    ]
    names = sorted(p.name for p in (tmp_path / "predictions").iterdir())
    assert names == ["additive_seed1.csv", "additive_seed1_cells5.csv"]
    with pytest.raises(ValueError, match="made with train_cells levels"):
        run(dataset, "combo", model_runs("additive"), [1], out=tmp_path, resume=True)


def test_fits_see_the_capped_training_cells(dataset):
    seen = []

    def record(spec, seeds, model):
        seen.append(model.train_cells_seen)

    class Recording:
        def __init__(self, model):
            self.model = model

        def fit(self, data, split):
            self.model.fit(data, split)
            training = [name for name in split.train if name != "ctrl"]
            self.model.train_cells_seen = data.cells_per_condition[training].max()
            return self.model

    original = run_module.get_model
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(run_module, "get_model", lambda n, c=None: Recording(original(n, c)))
        run(
            dataset,
            "combo",
            model_runs("additive"),
            [1],
            train_cells=[3, 8],
            on_fitted=record,
            score=False,
        )
    assert seen == [3, 8]


def test_context_splits_refuse_levels(dataset):
    with pytest.raises(ValueError, match="not supported for the cross_context split"):
        run(dataset, "cross_context", model_runs("additive"), [1], train_cells=[5])
