"""evaluate / noise_ceiling / summarize on a tiny hand-made dataset with planted effects."""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from perturbflow.data import CONDITION_COLUMN, read
from perturbflow.data.splits import CROSS_CELL_LINE, Split
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
from perturbflow.eval.evaluate import (
    SIZE_COLUMNS,
    _correlation_to_full,
    condition_sizes,
    training_reference,
)
from perturbflow.eval.metrics import (
    DEFAULT_METRIC_NAMES,
    energy_distance,
    pearson_systema,
    pearson_systema_de20,
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
    assert len(results) == len(TEST) * len(DEFAULT_METRIC_NAMES)
    assert not results.duplicated(["condition", "metric"]).any()
    assert list(dict.fromkeys(results["metric"])) == list(DEFAULT_METRIC_NAMES)
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
    assert len(ceiling) == len(TEST) * len(DEFAULT_METRIC_NAMES)
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


# -- Systema reference and the energy distance on genes -------------------------------------------


def _noisy(dataset, sd: float = 0.5, seed: int = 5) -> ad.AnnData:
    predictions = _real_cells(dataset)
    predictions.X = predictions.X + np.random.default_rng(seed).normal(0, sd, predictions.shape)
    return predictions


def test_systema_reference_is_the_mean_of_the_training_perturbations(dataset, split, de):
    reference, names = training_reference(dataset, split)
    assert names == ["A", "B"]  # split.train without ctrl
    expected = (dataset.expression("A").mean(axis=0) + dataset.expression("B").mean(axis=0)) / 2
    np.testing.assert_allclose(reference, expected, rtol=1e-6)
    predictions = _noisy(dataset)
    results = evaluate(predictions, dataset, split, de=de, model="noisy")
    assert results.attrs["perturbflow"]["systema_reference"] == (
        "mean of 2 training perturbation pseudobulks"
    )
    for name in TEST:
        pred = np.asarray(predictions[predictions.obs[CONDITION_COLUMN] == name].X, np.float32)
        pred_mean = pred.mean(axis=0, dtype=np.float64)
        true_mean = dataset.expression(name).mean(axis=0, dtype=np.float64)
        assert _value(results, name, "pearson_systema") == pytest.approx(
            pearson_systema(pred_mean, true_mean, reference), abs=1e-9
        )
        assert _value(results, name, "pearson_systema_de20") == pytest.approx(
            pearson_systema_de20(pred_mean, true_mean, reference, de[name]), abs=1e-9
        )
    # Differently referenced than pearson_delta, so differently valued.
    systema = results[results["metric"] == "pearson_systema"]["value"].to_numpy()
    delta = results[results["metric"] == "pearson_delta"]["value"].to_numpy()
    assert not np.allclose(systema, delta)


def test_test_conditions_listed_in_train_do_not_enter_the_reference(dataset):
    # In a context split a test name in train stands for other lines' cells; here the dataset's
    # cells of that name are the truth, which must not leak into the reference.
    context = Split(
        kind=CROSS_CELL_LINE,
        seed=0,
        train=("ctrl", "A", "B", "C"),
        val=(),
        test=("C",),
        subgroups={"C": "cross_line_x"},
        params={"cell_type_key": "line", "target_line": "x"},
    )
    assert training_reference(dataset, context)[1] == ["A", "B"]


def test_without_training_perturbations_systema_is_nan_and_says_why(dataset, split, de, caplog):
    held_out_only = read(dataset.adata[dataset.cell_mask(["ctrl", *TEST])].copy(), min_cells=1)
    predictions = _noisy(dataset)
    with caplog.at_level(logging.WARNING, logger="perturbflow.eval.evaluate"):
        results = evaluate(predictions, held_out_only, split, de=de, model="noisy")
    assert "none of the split's 2 training perturbation(s) has cells" in caplog.text
    systema = results["metric"].str.startswith("pearson_systema")
    assert results.loc[systema, "value"].isna().all() and systema.sum() == 2 * len(TEST)
    assert results.loc[~systema, "value"].notna().all()  # every other metric is unaffected
    assert results.attrs["perturbflow"]["systema_reference"].startswith("none")
    # Without a split at all: the same, with its own reason.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="perturbflow.eval.evaluate"):
        alone = evaluate(
            predictions, dataset, None, conditions=TEST, de=de, metrics=["pearson_systema"]
        )
    assert "no split names the training perturbations" in caplog.text
    assert alone["value"].isna().all()
    # A reference given from elsewhere (e.g. the fit data of a cross-line task) is used as is.
    reference, _ = training_reference(dataset, split)
    given = evaluate(
        predictions, held_out_only, split, de=de, model="noisy", systema_reference=reference
    )
    full = evaluate(predictions, dataset, split, de=de, model="noisy")
    rows = given["metric"].str.startswith("pearson_systema")
    np.testing.assert_allclose(
        given.loc[rows, "value"],
        full.loc[full["metric"].str.startswith("pearson_systema"), "value"],
    )
    assert given.attrs["perturbflow"]["systema_reference"] == "given"
    with pytest.raises(EvaluationError, match="systema_reference"):
        evaluate(predictions, dataset, split, de=de, systema_reference=np.ones(3))


def test_energy_distance_genes_uses_all_genes_and_the_same_cell_samples(dataset, split, de):
    predictions = _noisy(dataset)
    options = dict(de=de, model="noisy", seed=4, max_cells=25)  # 40 cells: a real subsample
    both = evaluate(predictions, dataset, split, **options)
    on_genes = evaluate(
        predictions, dataset, split, energy_pcs=None, metrics=["energy_distance"], **options
    )
    in_pcs = evaluate(predictions, dataset, split, energy_pcs=3, **options)
    for name in TEST:
        genes = _value(both, name, "energy_distance_genes")
        assert genes == _value(on_genes, name, "energy_distance")  # same samples, same space
        assert genes == _value(in_pcs, name, "energy_distance_genes")  # energy_pcs is not used
        assert genes != _value(both, name, "energy_distance")  # 50-PC space: another number
        assert genes > 0
    # By hand for one condition with every cell: Euclidean energy over all genes.
    everything = evaluate(
        predictions, dataset, split, de=de, conditions=["C"], metrics=["energy_distance_genes"]
    )
    pred = np.asarray(predictions[predictions.obs[CONDITION_COLUMN] == "C"].X, dtype=np.float32)
    expected = energy_distance(pred.astype(np.float64), dataset.expression("C").astype(np.float64))
    assert everything["value"].iloc[0] == pytest.approx(expected, rel=1e-12)
    assert both.attrs["perturbflow"]["energy_genes_space"] == "raw genes"


# -- the ceiling is what a perfect model reaches against all n cells ------------------------------

SIM_GENES = [f"S{i}" for i in range(200)]
SIM_CONDITIONS = SIM_GENES[:30]
SIM_DE = np.arange(100, 120)  # the 20 "DE" genes: effects twice as large, as in a real screen
SIM_CELLS, SIM_NOISE, SIM_EFFECT, SIM_PREDICTED = 16, 1.0, 0.3, 100


def _gaussian_screen(seed: int):
    """30 conditions of 16 Gaussian cells (sd 1 per gene) whose true means ``mu`` are known, and
    the predictions of a perfect model: ``mu`` itself for mean metrics, 100 cells drawn from the
    true distribution for the energy distance."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(7.0, 9.0, len(SIM_GENES))  # (G,) far from 0: no clipping needed
    effect = np.full(len(SIM_GENES), SIM_EFFECT)  # (G,) sd of the true changes
    effect[SIM_DE] *= 2
    truth = {name: base + rng.normal(0.0, effect) for name in SIM_CONDITIONS}
    blocks = [base + rng.normal(0.0, SIM_NOISE, (300, len(SIM_GENES)))]  # (300, G) control
    blocks += [
        truth[name] + rng.normal(0.0, SIM_NOISE, (SIM_CELLS, len(SIM_GENES)))
        for name in SIM_CONDITIONS
    ]
    labels = ["ctrl"] * 300 + [name for name in SIM_CONDITIONS for _ in range(SIM_CELLS)]

    def cells(x, labels, prefix):
        return ad.AnnData(
            X=np.vstack(x).astype(np.float32),
            obs=pd.DataFrame(
                {CONDITION_COLUMN: labels}, index=[f"{prefix}{i}" for i in range(len(labels))]
            ),
            var=pd.DataFrame(index=SIM_GENES),
        )

    data = cells(blocks, labels, "cell")
    data.obs = data.obs.rename(columns={CONDITION_COLUMN: "condition"})
    exact = cells([truth[name][None] for name in SIM_CONDITIONS], SIM_CONDITIONS, "mean")
    # A fixed Systema reference, free of these cells' noise like the mean of training perturbations.
    reference = np.mean([truth[name] for name in SIM_CONDITIONS], axis=0)  # (G,)
    sampled = cells(
        [
            truth[name] + rng.normal(0.0, SIM_NOISE, (SIM_PREDICTED, len(SIM_GENES)))
            for name in SIM_CONDITIONS
        ],
        np.repeat(SIM_CONDITIONS, SIM_PREDICTED),
        "pred",
    )
    return read(data, min_cells=1), exact, sampled, reference


@pytest.fixture(scope="module")
def perfect_vs_ceiling():
    """Mean over 2 screens × 30 conditions (× 3 splits for the ceilings) of each metric for the
    perfect model, the corrected ceiling and the raw split-half ceiling."""
    # DE genes fixed in advance, so the expected errors hold exactly (no selection on the cells).
    options = dict(
        conditions=SIM_CONDITIONS,
        de={name: SIM_DE for name in SIM_CONDITIONS},
        energy_pcs=None,
        max_cells=SIM_PREDICTED,
    )
    means = ["pearson_delta", "pearson_delta_de20", "pearson_systema", "pearson_systema_de20"]
    means.append("mse_de20")
    energies = ["energy_distance", "energy_distance_genes"]
    frames = []
    for seed in range(2):
        dataset, exact, sampled, reference = _gaussian_screen(seed)
        options["systema_reference"] = reference
        frames.append(evaluate(exact, dataset, None, model="perfect", metrics=means, **options))
        frames.append(
            evaluate(sampled, dataset, None, model="perfect", metrics=energies, **options)
        )
        for split_seed in range(3):
            frames.append(noise_ceiling(dataset, None, seed=split_seed, **options))
            raw = noise_ceiling(dataset, None, seed=split_seed, correction="none", **options)
            frames.append(raw.assign(model="split_half"))
    results = pd.concat(frames, ignore_index=True)
    return results.groupby(["metric", "model"])["value"].mean().unstack("model")


def test_corrected_ceiling_matches_a_perfect_model_in_expectation(perfect_vs_ceiling):
    table = perfect_vs_ceiling
    perfect, corrected = table["perfect"], table["noise_ceiling"]
    # Expected: E(mu - xbar_16)^2 = 1/16 per gene; tolerances are about 3 standard errors.
    assert perfect["mse_de20"] == pytest.approx(1 / SIM_CELLS, rel=0.1)
    assert corrected["mse_de20"] == pytest.approx(1 / SIM_CELLS, rel=0.1)
    assert corrected["pearson_delta"] == pytest.approx(perfect["pearson_delta"], abs=0.015)
    assert corrected["pearson_delta_de20"] == pytest.approx(
        perfect["pearson_delta_de20"], abs=0.025
    )
    assert corrected["pearson_systema"] == pytest.approx(perfect["pearson_systema"], abs=0.015)
    assert corrected["pearson_systema_de20"] == pytest.approx(
        perfect["pearson_systema_de20"], abs=0.025
    )
    for metric in ("energy_distance", "energy_distance_genes"):
        assert corrected[metric] == pytest.approx(perfect[metric], rel=0.03)


def test_uncorrected_split_half_is_measurably_pessimistic(perfect_vs_ceiling):
    table = perfect_vs_ceiling
    perfect, raw = table["perfect"], table["split_half"]
    assert raw["mse_de20"] == pytest.approx(4 / SIM_CELLS, rel=0.1)  # sigma^2 (1/8 + 1/8)
    assert raw["pearson_delta"] < perfect["pearson_delta"] - 0.3
    assert raw["pearson_delta_de20"] < perfect["pearson_delta_de20"] - 0.15
    assert raw["pearson_systema"] < perfect["pearson_systema"] - 0.3
    assert raw["energy_distance"] > 3 * perfect["energy_distance"]


def test_correction_rescales_only_the_metrics_it_names(dataset, split, de):
    corrected = noise_ceiling(dataset, split, de=de)
    raw = noise_ceiling(dataset, split, de=de, correction="none")
    assert corrected.attrs["perturbflow"]["ceiling_correction"] == "perfect_model"
    assert raw.attrs["perturbflow"]["corrected_metrics"] == []
    assert set(corrected.attrs["perturbflow"]["corrected_metrics"]) == {
        "pearson_delta",
        "pearson_delta_de20",
        "pearson_systema",
        "pearson_systema_de20",
        "mse_de20",
        "energy_distance",
        "energy_distance_genes",
    }
    keys = ["condition", "subgroup", "metric", "model", "seed"]
    pd.testing.assert_frame_equal(corrected[keys], raw[keys])
    for name in TEST:  # 40 cells: halves of 20, energy on all of them
        for metric in ("direction_acc_de20", "discrimination_l1"):
            assert _value(corrected, name, metric) == _value(raw, name, metric)
        assert _value(corrected, name, "mse_de20") == pytest.approx(
            _value(raw, name, "mse_de20") / 4
        )
        assert _value(corrected, name, "energy_distance") == pytest.approx(
            _value(raw, name, "energy_distance") * (1 / 500 + 1 / 40) / (2 / 20)
        )
        for metric in ("pearson_delta", "pearson_systema"):
            r = _value(raw, name, metric)
            assert _value(corrected, name, metric) == pytest.approx(np.sqrt(2 * r / (1 + r)))
    with pytest.raises(EvaluationError, match="'perfect_model', 'none'"):
        noise_ceiling(dataset, split, de=de, correction="spearman_brown")


@pytest.mark.parametrize("a, b", [(8, 8), (7, 8), (1, 2), (250, 251)])
def test_correlation_correction_inverts_the_attenuation_of_unequal_halves(a, b):
    noise_to_signal = np.array([0.0, 0.1, 1.0, 10.0, 300.0])  # k = per-cell noise / signal
    half = 1 / np.sqrt((1 + noise_to_signal / a) * (1 + noise_to_signal / b))
    n = np.full(half.shape, float(a + b))
    expected = 1 / np.sqrt(1 + noise_to_signal / (a + b))
    np.testing.assert_allclose(_correlation_to_full(half, n, 500), expected, rtol=1e-9)
    assert _correlation_to_full(np.array([-0.2, 0.0]), n[:2], 500).tolist() == [0.0, 0.0]
    assert np.isnan(_correlation_to_full(np.array([np.nan]), n[:1], 500)).all()


def test_condition_sizes_counts_real_cells_and_genes(dataset):
    sizes = condition_sizes(dataset, ["A+C", "B+A"])
    assert tuple(sizes.columns) == SIZE_COLUMNS
    assert sizes["condition"].tolist() == ["A+C", "A+B"]
    assert sizes["n_cells"].tolist() == [40, 40]
    assert sizes["n_genes"].tolist() == [len(GENES)] * 2
    with pytest.raises(EvaluationError, match="'ctrl'"):
        condition_sizes(dataset, ["ctrl"])


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
    assert len(summary) == 2 * len(SUBGROUPS) * len(DEFAULT_METRIC_NAMES)
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
