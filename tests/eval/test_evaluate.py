"""evaluate / noise_ceiling / summarize on a tiny hand-made dataset with planted effects."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from perturbflow.data import CONDITION_COLUMN, read
from perturbflow.data.splits import Split
from perturbflow.eval import (
    METRICS,
    RESULT_COLUMNS,
    SUMMARY_COLUMNS,
    EvaluationError,
    PredictionValidationError,
    de_genes,
    evaluate,
    noise_ceiling,
    summarize,
)

GENES = ["A", "B", "C"] + [f"G{i}" for i in range(3, 30)]
TEST = ("C", "A+B", "A+C")
SUBGROUPS = {"C": "unseen_single", "A+B": "combo_seen2", "A+C": "combo_seen1"}


@pytest.fixture(scope="module")
def dataset():
    """Control + 5 conditions, 40 cells each; each condition shifts 8 random genes by ±1.5 and
    knocks its target genes down."""
    rng = np.random.default_rng(0)
    counts = {"ctrl": 80, "A": 40, "B": 40, "C": 40, "A+B": 40, "A+C": 40}
    base = rng.uniform(2.0, 4.0, len(GENES))  # (G,)
    blocks, labels = [], []
    for name, n in counts.items():
        mean = base.copy()
        if name != "ctrl":
            shifted = rng.choice(np.arange(3, len(GENES)), size=8, replace=False)
            mean[shifted] += rng.choice([-1.5, 1.5], size=8)
            mean[[GENES.index(gene) for gene in name.split("+")]] -= 1.8
        blocks.append(mean + rng.normal(0.0, 0.2, (n, len(GENES))))  # (n, G)
        labels += [name] * n
    adata = ad.AnnData(
        X=np.clip(np.vstack(blocks), 0.0, None).astype(np.float32),
        obs=pd.DataFrame({"condition": labels}, index=[f"cell{i}" for i in range(len(labels))]),
        var=pd.DataFrame(index=GENES),
    )
    return read(adata, min_cells=1)


@pytest.fixture(scope="module")
def split():
    return Split(
        kind="custom", seed=0, train=("ctrl", "A", "B"), val=(), test=TEST, subgroups=SUBGROUPS
    )


@pytest.fixture(scope="module")
def de(dataset):
    return de_genes(dataset, list(TEST))


def _real_cells(dataset, names=TEST) -> ad.AnnData:
    """Predictions that are the real cells themselves, with only the condition column."""
    cells = dataset.adata[dataset.cell_mask(list(names))]
    predictions = ad.AnnData(
        X=np.asarray(cells.X).copy(),
        obs=pd.DataFrame(
            {CONDITION_COLUMN: cells.obs[CONDITION_COLUMN].astype(str).to_numpy()},
            index=cells.obs_names.copy(),
        ),
        var=pd.DataFrame(index=cells.var_names.copy()),
    )
    predictions.uns["perturbflow"] = {"model": "oracle"}
    return predictions


def _value(results: pd.DataFrame, condition: str, metric: str) -> float:
    row = results[(results["condition"] == condition) & (results["metric"] == metric)]
    assert len(row) == 1
    return float(row["value"].iloc[0])


def _indexed(results: pd.DataFrame) -> pd.Series:
    return results.set_index(["condition", "metric"])["value"].sort_index()


def test_long_format_one_row_per_condition_and_metric(dataset, split, de):
    results = evaluate(_real_cells(dataset), dataset, split, seed=3, de=de)
    assert tuple(results.columns) == RESULT_COLUMNS
    assert len(results) == len(TEST) * len(METRICS)
    assert not results.duplicated(["condition", "metric"]).any()
    assert set(results["metric"]) == set(METRICS)
    assert list(dict.fromkeys(results["condition"])) == list(TEST)
    assert dict(zip(results["condition"], results["subgroup"], strict=True)) == SUBGROUPS
    assert set(results["model"]) == {"oracle"}  # read from uns
    assert set(results["seed"]) == {3}
    assert results["value"].dtype == np.float64
    assert results.attrs["perturbflow"]["energy_pcs"] == 50


def test_perfect_predictions_score_best_values(dataset, split, de):
    results = evaluate(_real_cells(dataset), dataset, split, de=de)
    for _, row in results.iterrows():
        assert row["value"] == pytest.approx(METRICS[row["metric"]].best, abs=1e-9), row["metric"]


def test_shuffled_predictions_score_worse(dataset, split, de):
    predictions = _real_cells(dataset)
    rotate = dict(zip(TEST, TEST[1:] + TEST[:1], strict=True))  # every condition gets another's
    predictions.obs[CONDITION_COLUMN] = predictions.obs[CONDITION_COLUMN].map(rotate)
    shuffled = evaluate(predictions, dataset, split, model="shuffled", de=de)
    perfect = evaluate(_real_cells(dataset), dataset, split, de=de)
    for name in TEST:
        for metric in ("pearson_delta", "pearson_delta_de20", "discrimination_l1"):
            assert _value(shuffled, name, metric) < _value(perfect, name, metric), metric
        for metric in ("mse_de20", "energy_distance"):
            assert _value(shuffled, name, metric) > _value(perfect, name, metric), metric
    assert set(shuffled["model"]) == {"shuffled"}


def test_invariant_to_gene_order_and_sparse_storage(dataset, split, de):
    predictions = _real_cells(dataset)
    predictions.X = predictions.X + np.random.default_rng(1).normal(0, 0.3, predictions.shape)
    reference = evaluate(predictions, dataset, split, de=de)
    order = np.random.default_rng(2).permutation(predictions.n_vars)
    permuted = predictions[:, order].copy()
    pd.testing.assert_series_equal(
        _indexed(evaluate(permuted, dataset, split, de=de)), _indexed(reference), rtol=1e-6
    )
    permuted.X = sp.csr_matrix(permuted.X)
    pd.testing.assert_series_equal(
        _indexed(evaluate(permuted, dataset, split, de=de)), _indexed(reference), rtol=1e-6
    )


def test_condition_order_does_not_change_any_score(dataset, split, de):
    predictions = _real_cells(dataset)
    predictions.X = predictions.X + np.random.default_rng(4).normal(0, 0.5, predictions.shape)
    forward = evaluate(predictions, dataset, split, de=de, max_cells=15)
    backward = evaluate(predictions, dataset, split, de=de, max_cells=15, conditions=TEST[::-1])
    assert list(dict.fromkeys(backward["condition"])) == list(TEST[::-1])
    pd.testing.assert_series_equal(_indexed(forward), _indexed(backward))


def test_subsampling_is_seeded(dataset, split, de):
    predictions = _real_cells(dataset)

    def run(seed):
        return evaluate(
            predictions, dataset, split, de=de, seed=seed, max_cells=10, metrics=["energy_distance"]
        )

    pd.testing.assert_frame_equal(run(0), run(0))
    assert not np.allclose(run(0)["value"], run(1)["value"])
    assert (run(0)["value"] > 0).all()  # different subsamples of the same cells


def test_metrics_subset_and_raw_gene_energy(dataset, split):
    predictions = _real_cells(dataset)
    results = evaluate(
        predictions, dataset, split, metrics=["energy_distance"], energy_pcs=None, model="m"
    )
    assert set(results["metric"]) == {"energy_distance"}
    assert np.allclose(results["value"], 0.0)
    assert results.attrs["perturbflow"]["energy_space"] == "raw genes"


def test_combination_labels_in_any_gene_order_are_accepted(dataset, split, de):
    predictions = _real_cells(dataset)
    labels = predictions.obs[CONDITION_COLUMN].replace({"A+B": "B+A"})
    predictions.obs[CONDITION_COLUMN] = labels.to_numpy()
    results = evaluate(predictions, dataset, split, de=de)
    assert _value(results, "A+B", "pearson_delta") == pytest.approx(1.0)


def test_control_mean_baseline_gives_nan_pearson(dataset, split, de):
    control = dataset.adata[dataset.cell_mask("ctrl")]
    predictions = ad.AnnData(
        X=np.tile(np.asarray(control.X), (len(TEST), 1)),
        obs=pd.DataFrame(
            {CONDITION_COLUMN: np.repeat(TEST, control.n_obs)},
            index=[f"pred{i}" for i in range(len(TEST) * control.n_obs)],
        ),
        var=pd.DataFrame(index=GENES),
    )
    results = evaluate(predictions, dataset, split, de=de, model="control_mean")
    pearsons = results[results["metric"] == "pearson_delta"]["value"]
    assert pearsons.isna().all()  # no change predicted: correlation undefined
    summary = summarize(results)
    row = summary[summary["metric"] == "pearson_delta"]
    assert (row["n_missing"] == 1).all() and (row["n_conditions"] == 0).all()


def test_missing_condition_is_named(dataset, split, de):
    predictions = _real_cells(dataset, names=("C", "A+B"))
    with pytest.raises(PredictionValidationError, match=r"'A\+C'"):
        evaluate(predictions, dataset, split, de=de)


def test_gene_mismatch_names_the_genes(dataset, split, de):
    predictions = _real_cells(dataset)
    with pytest.raises(PredictionValidationError, match="missing: 'G7'"):
        evaluate(predictions[:, [g for g in GENES if g != "G7"]].copy(), dataset, split, de=de)
    extra = ad.AnnData(
        X=np.hstack([predictions.X, np.zeros((predictions.n_obs, 1), np.float32)]),
        obs=predictions.obs.copy(),
        var=pd.DataFrame(index=[*GENES, "NOTAGENE"]),
    )
    with pytest.raises(PredictionValidationError, match="not in the dataset: 'NOTAGENE'"):
        evaluate(extra, dataset, split, de=de)


def test_missing_condition_column_is_reported(dataset, split, de):
    predictions = _real_cells(dataset)
    predictions.obs = predictions.obs.rename(columns={CONDITION_COLUMN: "condition"})
    with pytest.raises(PredictionValidationError, match=CONDITION_COLUMN):
        evaluate(predictions, dataset, split, de=de)


def test_invalid_requests_raise(dataset, split, de):
    predictions = _real_cells(dataset)
    with pytest.raises(EvaluationError, match="'ctrl'"):
        evaluate(predictions, dataset, split, conditions=["ctrl", "C"], de=de)
    with pytest.raises(EvaluationError, match="'Z'"):
        evaluate(predictions, dataset, split, conditions=["Z"], de=de)
    with pytest.raises(EvaluationError, match=r"lack .*'A\+C'"):
        evaluate(predictions, dataset, split, de={"C": de["C"], "A+B": de["A+B"]})
    with pytest.raises(KeyError, match="registered metrics"):
        evaluate(predictions, dataset, split, de=de, metrics=["accuracy"])


def test_noise_ceiling_is_near_perfect_when_halves_agree(dataset, split):
    de = de_genes(dataset, list(TEST), n_top=8)  # only planted genes: no coin-flip signs
    ceiling = noise_ceiling(dataset, split, seed=0, de=de)
    assert tuple(ceiling.columns) == RESULT_COLUMNS
    assert len(ceiling) == len(TEST) * len(METRICS)
    assert set(ceiling["model"]) == {"noise_ceiling"}
    for name in TEST:
        assert _value(ceiling, name, "pearson_delta") > 0.95
        assert _value(ceiling, name, "pearson_delta_de20") > 0.95
        assert _value(ceiling, name, "direction_acc_de20") == 1.0
        assert _value(ceiling, name, "discrimination_l1") == 1.0
    pd.testing.assert_frame_equal(ceiling, noise_ceiling(dataset, split, seed=0, de=de))


def test_noise_ceiling_needs_two_cells(dataset):
    small = read(dataset.adata[dataset.cell_mask(["ctrl", "A", "B"])][:81].copy(), min_cells=1)
    with pytest.raises(EvaluationError, match=r"'A' \(1\)"):
        noise_ceiling(small, None, conditions=["A"], metrics=["energy_distance"])


def test_summarize_means_per_subgroup_model_metric(dataset, split, de):
    predictions = _real_cells(dataset)
    predictions.X = predictions.X + np.random.default_rng(5).normal(0, 0.5, predictions.shape)
    results = pd.concat(
        [
            evaluate(predictions, dataset, split, de=de, model="noisy", seed=0),
            evaluate(predictions, dataset, split, de=de, model="noisy", seed=1),
            noise_ceiling(dataset, split, de=de),
        ],
        ignore_index=True,
    )
    summary = summarize(results)
    assert tuple(summary.columns) == SUMMARY_COLUMNS
    assert len(summary) == 2 * len(SUBGROUPS) * len(METRICS)
    row = summary[
        (summary["model"] == "noisy")
        & (summary["subgroup"] == "combo_seen2")
        & (summary["metric"] == "energy_distance")
    ].iloc[0]
    values = results[
        (results["model"] == "noisy")
        & (results["condition"] == "A+B")
        & (results["metric"] == "energy_distance")
    ]["value"]
    assert row["mean"] == pytest.approx(values.mean())
    assert row["sd"] == pytest.approx(values.std(ddof=1))
    assert (row["n_conditions"], row["n_seeds"], row["n_missing"]) == (1, 2, 0)
    with pytest.raises(EvaluationError, match="value"):
        summarize(results.drop(columns="value"))
