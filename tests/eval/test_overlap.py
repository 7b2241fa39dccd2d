"""cell-eval's DE overlap (``overlap_at_k``): reference cases, errors, evaluate/loop, agreement."""

from __future__ import annotations

import importlib.util

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import perturbflow.eval.overlap as overlap_module
from perturbflow.data import CONDITION_COLUMN, read
from perturbflow.data.conditions import CONTROL_NAME
from perturbflow.data.splits import Split
from perturbflow.eval import evaluate, noise_ceiling
from perturbflow.eval.evaluate import EvaluationError, real_de_table
from perturbflow.eval.loop import model_runs, run
from perturbflow.eval.metrics import DEFAULT_METRIC_NAMES, METRICS, UnknownMetricError
from perturbflow.eval.overlap import (
    OVERLAP_KS,
    DEOverlapError,
    DETable,
    de_overlap,
    de_table,
    overlap_metric_name,
    resolve_backend,
)

HAS_CELL_EVAL = importlib.util.find_spec("cell_eval") is not None
NEEDS_CELL_EVAL = pytest.mark.skipif(
    not HAS_CELL_EVAL,
    reason="cell-eval is not installed (pip install perturbflow[celleval]); the agreement with "
    "cell-eval's own DE test and overlap cannot be checked",
)
BACKENDS = ["scipy", pytest.param("cell-eval", marks=NEEDS_CELL_EVAL)]
OVERLAP_METRICS = [overlap_metric_name(k) for k in OVERLAP_KS]

N_GENES = 60
GENES = pd.Index([f"g{i}" for i in range(N_GENES)])
PLANTED = np.array([7, 3, 41, 22, 15, 50, 9, 33, 28, 1])
# log1p shift of each planted gene: sizes distinct and decreasing, alternating up and down.
EFFECTS = np.linspace(2.0, 0.2, len(PLANTED)) * np.array([1, -1] * (len(PLANTED) // 2))


def _cells(rng, n: int, shifted: np.ndarray, effects: np.ndarray) -> np.ndarray:
    """``(n, G)`` log1p-like cells around 3 with noise sd 0.1, ``shifted`` genes moved."""
    mean = np.full(N_GENES, 3.0)
    mean[shifted] += effects
    return (mean + rng.normal(0.0, 0.1, (n, N_GENES))).astype(np.float32)


@pytest.fixture(scope="module")
def planted():
    """Control, a condition with the planted genes, and a prediction that keeps the first five
    planted genes and moves five others by the effects of the last five."""
    rng = np.random.default_rng(0)
    control = _cells(rng, 200, PLANTED[:0], EFFECTS[:0])
    real = _cells(rng, 100, PLANTED, EFFECTS)
    others = np.array([2, 4, 5, 6, 8])
    half = _cells(rng, 100, np.concatenate([PLANTED[:5], others]), EFFECTS)
    return control, real, half, others


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_planted_de_set_is_recovered_exactly_in_order(planted, backend):
    control, real, _, _ = planted
    table = de_table({"A": real}, control, GENES, backend=backend)
    assert table.backend == backend
    # Ranked by the fold change of geometric means in count space: expm1(3 + e) / expm1(3), so
    # a step down ranks above the same step up.
    strength = np.abs(np.log2(np.expm1(3.0 + EFFECTS) / np.expm1(3.0)))
    assert list(table.ranking("A")) == list(PLANTED[np.argsort(-strength)])


@pytest.mark.parametrize("backend", BACKENDS)
def test_overlap_of_a_half_right_prediction(planted, backend):
    control, real, half, others = planted
    real_de = de_table({"A": real}, control, GENES, backend=backend)
    pred_de = de_table({"A": half}, control, GENES, backend=backend)
    assert set(pred_de.ranking("A")[:10]) == set(PLANTED[:5]) | set(others)
    # Top 5 of both sides are the first five planted genes; of the ten real DE genes the
    # prediction has five.
    assert de_overlap(real_de, pred_de, 5, backend=backend)[0] == 1.0
    assert de_overlap(real_de, pred_de, None, backend=backend)[0] == 0.5
    # k beyond the real DE genes is cut to them (cell-eval): overlap_at_50 = overlap_at_N.
    assert de_overlap(real_de, pred_de, 50, backend=backend)[0] == 0.5
    assert de_overlap(real_de, real_de, None, backend=backend)[0] == 1.0


def test_no_real_de_gene_scores_zero_as_in_cell_eval(planted):
    control, _, half, _ = planted
    rng = np.random.default_rng(1)
    nothing = {"A": _cells(rng, 100, PLANTED[:0], EFFECTS[:0])}
    null = de_table(nothing, control, GENES, backend="scipy")
    pred = de_table({"A": half}, control, GENES, backend="scipy")
    assert null.ranking("A").size == 0
    assert de_overlap(null, pred, 20, backend="scipy")[0] == 0.0


def test_a_random_prediction_overlaps_about_k_over_g():
    """Top genes drawn independently of the real ones share k/G of them in expectation."""
    rng = np.random.default_rng(2)
    n_conditions, n_genes, k = 300, 1000, 50
    genes = pd.Index([f"g{i}" for i in range(n_genes)])
    names = tuple(f"c{i}" for i in range(n_conditions))

    def random_table() -> DETable:
        fdr = np.full((n_conditions, n_genes), 1e-6)  # every gene significant
        lfc = rng.normal(size=(n_conditions, n_genes))  # a random order per condition
        return DETable(names, genes, lfc, fdr, fdr, backend="scipy")

    values = de_overlap(random_table(), random_table(), k, backend="scipy")  # (C,)
    # Hypergeometric mean k/G = 0.05, sd of one condition ~0.03, of the mean ~0.002.
    assert values.mean() == pytest.approx(k / n_genes, abs=0.01)
    assert values.max() < 0.2


@pytest.mark.parametrize("bad", [0, -5, 2.5, True, "20"])
def test_bad_k_is_refused(planted, bad):
    control, real, _, _ = planted
    table = de_table({"A": real}, control, GENES, backend="scipy")
    with pytest.raises(DEOverlapError, match="positive integer or None"):
        de_overlap(table, table, bad, backend="scipy")
    with pytest.raises(DEOverlapError, match="positive integer or None"):
        overlap_metric_name(bad)


def test_unregistered_n_backend_and_mismatched_tables_are_refused(planted, dataset, split):
    control, real, half, _ = planted
    with pytest.raises(UnknownMetricError, match="overlap_at_7"):
        evaluate(_real_cells(dataset), dataset, split, metrics=["overlap_at_7"])
    with pytest.raises(DEOverlapError, match="backend must be one of"):
        resolve_backend("numba")
    a = de_table({"A": real}, control, GENES, backend="scipy")
    b = de_table({"B": half}, control, GENES, backend="scipy")
    with pytest.raises(DEOverlapError, match="same conditions and genes"):
        de_overlap(a, b, 20, backend="scipy")


def test_names_follow_cell_eval():
    assert OVERLAP_METRICS == ["overlap_at_20", "overlap_at_50", "overlap_at_100", "overlap_at_N"]
    for name in OVERLAP_METRICS:
        assert METRICS[name].higher_is_better and METRICS[name].best == 1.0
        assert name not in DEFAULT_METRIC_NAMES


# -- evaluate, noise ceiling and the loop --------------------------------------------------------

TEST = ("C", "A+B", "A+C")


@pytest.fixture(scope="module")
def dataset():
    """Control + 5 conditions, 40 cells each; each shifts 8 random genes by ±1.5 (test_evaluate)."""
    rng = np.random.default_rng(0)
    counts = {"ctrl": 80, "A": 40, "B": 40, "C": 40, "A+B": 40, "A+C": 40}
    genes = [f"G{i}" for i in range(30)]
    base = rng.uniform(2.0, 4.0, len(genes))  # (G,)
    blocks, labels = [], []
    for name, n in counts.items():
        mean = base.copy()
        if name != "ctrl":
            mean[rng.choice(len(genes), size=8, replace=False)] += rng.choice([-1.5, 1.5], 8)
        blocks.append(mean + rng.normal(0.0, 0.2, (n, len(genes))))  # (n, G)
        labels += [name] * n
    adata = ad.AnnData(
        X=np.clip(np.vstack(blocks), 0.0, None).astype(np.float32),
        obs=pd.DataFrame({"condition": labels}, index=[f"cell{i}" for i in range(len(labels))]),
        var=pd.DataFrame(index=genes),
    )
    return read(adata, min_cells=1)


@pytest.fixture(scope="module")
def split():
    subgroups = {name: "test" for name in TEST}
    return Split(
        kind="custom", seed=0, train=("ctrl", "A", "B"), val=(), test=TEST, subgroups=subgroups
    )


def _real_cells(dataset, shuffle_genes: bool = False) -> ad.AnnData:
    cells = dataset.adata[dataset.cell_mask(list(TEST))]
    matrix = np.asarray(cells.X).copy()  # (n, G)
    if shuffle_genes:  # the right cells under the wrong gene names
        matrix = matrix[:, np.random.default_rng(0).permutation(matrix.shape[1])]
    return ad.AnnData(
        X=matrix,
        obs=pd.DataFrame(
            {CONDITION_COLUMN: cells.obs[CONDITION_COLUMN].astype(str).to_numpy()},
            index=cells.obs_names.copy(),
        ),
        var=pd.DataFrame(index=cells.var_names.copy()),
    )


def _overlaps(results: pd.DataFrame) -> pd.Series:
    rows = results[results["metric"].str.startswith("overlap_at_")]
    return rows.set_index(["condition", "metric"])["value"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_predicting_the_real_cells_gives_overlap_one(dataset, split, backend):
    results = evaluate(_real_cells(dataset), dataset, split, de_overlap=True, de_backend=backend)
    overlaps = _overlaps(results)
    assert len(overlaps) == len(TEST) * len(OVERLAP_KS)
    assert (overlaps == 1.0).all()
    assert results.attrs["perturbflow"]["de_overlap"].startswith(
        "cell-eval" if backend == "cell-eval" else "perturbflow"
    )


def test_the_switch_adds_overlap_rows_and_they_tell_a_wrong_prediction(dataset, split):
    plain = evaluate(_real_cells(dataset), dataset, split, de_backend="scipy")
    assert list(dict.fromkeys(plain["metric"])) == list(DEFAULT_METRIC_NAMES)
    assert plain.attrs["perturbflow"]["de_overlap"] == "not computed"
    real_de = real_de_table(dataset, list(TEST), backend="scipy")
    wrong = evaluate(
        _real_cells(dataset, shuffle_genes=True), dataset, split, de_overlap=True, real_de=real_de
    )
    assert set(wrong["metric"]) == set(DEFAULT_METRIC_NAMES) | set(OVERLAP_METRICS)
    assert _overlaps(wrong).max() < 0.5  # 8 shifted genes of 30, shuffled to other names


def test_given_real_de_must_cover_the_conditions(dataset, split):
    partial = real_de_table(dataset, ["C"], backend="scipy")
    with pytest.raises(EvaluationError, match="real_de_table"):
        evaluate(_real_cells(dataset), dataset, split, de_overlap=True, real_de=partial)


def test_noise_ceiling_scores_the_overlap_of_two_halves(dataset, split):
    ceiling = noise_ceiling(dataset, split, de_overlap=True, de_backend="scipy")
    overlaps = _overlaps(ceiling)
    assert len(overlaps) == len(TEST) * len(OVERLAP_KS)
    # 20 cells a half against 80 controls find the 8 shifted genes in both halves.
    assert overlaps.min() > 0.7


def test_run_with_de_overlap_puts_it_in_the_summary_of_every_model(screen_data):
    dataset, _ = screen_data("tiny", split="combo", split_seed=1)
    runs = model_runs("additive,control_mean")
    result = run(dataset, "combo", runs, [1], de_overlap=True)
    summary = result.summary[result.summary["metric"].isin(OVERLAP_METRICS)]
    for model in ("additive", "control_mean", "noise_ceiling"):
        assert set(summary.loc[summary["model"] == model, "metric"]) == set(OVERLAP_METRICS)
    assert summary["mean"].between(0.0, 1.0).all()
    without = run(dataset, "combo", runs, [1], noise_ceiling_row=False)
    assert not without.results["metric"].isin(OVERLAP_METRICS).any()


# -- agreement with cell-eval ----------------------------------------------------------------------


@NEEDS_CELL_EVAL
def test_scipy_and_cell_eval_agree_on_a_seeded_example():
    """Same p-values, FDR and fold changes (float rounding), same overlaps for every k."""
    rng = np.random.default_rng(3)
    n_genes = 300
    genes = pd.Index([f"g{i}" for i in range(n_genes)])
    control = np.log1p(rng.poisson(2.0, (300, n_genes))).astype(np.float32)  # ties, zeros

    def condition() -> np.ndarray:
        rate = np.full(n_genes, 2.0)
        moved = rng.choice(n_genes, 40, replace=False)
        rate[moved] *= rng.uniform(0.2, 4.0, 40)
        return np.log1p(rng.poisson(rate, (60, n_genes))).astype(np.float32)

    real = {f"c{i}": condition() for i in range(4)}
    pred = {name: condition() for name in real}
    tables = {
        backend: (
            de_table(real, control, genes, backend=backend),
            de_table(pred, control, genes, backend=backend),
        )
        for backend in ("scipy", "cell-eval")
    }
    for side in (0, 1):
        ours, theirs = tables["scipy"][side], tables["cell-eval"][side]
        np.testing.assert_allclose(ours.p_value, theirs.p_value, rtol=1e-9, atol=1e-15)
        np.testing.assert_allclose(ours.fdr, theirs.fdr, rtol=1e-9, atol=1e-15)
        np.testing.assert_allclose(
            ours.log2_fold_change, theirs.log2_fold_change, rtol=1e-5, atol=1e-6
        )
    for k in (*OVERLAP_KS, 10):
        scipy_values = de_overlap(*tables["scipy"], k, backend="scipy")
        cell_eval_values = de_overlap(*tables["cell-eval"], k, backend="cell-eval")
        np.testing.assert_array_equal(scipy_values, cell_eval_values)
        assert 0.0 < scipy_values.mean() < 1.0  # neither trivial: the check can fail


@NEEDS_CELL_EVAL
def test_evaluate_equals_cell_eval_metrics_evaluator(screen_data, tmp_path):
    """cell-eval's own end-to-end evaluator on the same (real, pred) pair gives our values."""
    from cell_eval import MetricsEvaluator

    from perturbflow.eval.celleval import to_celleval_pair
    from perturbflow.models import get_model

    dataset, split = screen_data("tiny", split="combo", split_seed=1)
    predictions = get_model("additive").fit(dataset, split).predict(split.test, n_cells=30)
    predictions.X = np.clip(predictions.X, 0.0, None)  # cell-eval refuses negative log1p values
    ours = evaluate(predictions, dataset, split, de_overlap=True, de_backend="scipy")
    real, pred = to_celleval_pair(predictions, dataset, split.test)
    evaluator = MetricsEvaluator(
        adata_pred=pred,
        adata_real=real,
        control_pert=CONTROL_NAME,
        pert_col=CONDITION_COLUMN,
        num_threads=1,
        outdir=str(tmp_path),
    )
    theirs, _ = evaluator.compute(profile="de", write_csv=False)
    theirs = theirs.to_pandas().set_index("perturbation")
    compared = 0
    for name in ("overlap_at_N", "overlap_at_50", "overlap_at_100"):
        for condition in split.test:
            value = ours[(ours["condition"] == condition) & (ours["metric"] == name)]["value"]
            assert float(value.iloc[0]) == pytest.approx(theirs.loc[condition, name]), name
            compared += 1
    assert compared == 3 * len(split.test)


def test_the_cell_eval_test_restores_the_openmp_thread_count(planted, monkeypatch):
    """numba's OpenMP layer under pdex resets the thread count of torch's OpenMP runtime; the
    DE test must hand it back, or every later model fit runs on other threads than chosen."""
    import sys
    import types

    torch = pytest.importorskip("torch")
    control, real, _, _ = planted

    def resetting_pdex(adata, **kwargs):
        torch.set_num_threads(2)  # what numba's first OpenMP launch does to torch's runtime
        n = adata.n_vars
        return pd.DataFrame(
            {"log2_fold_change": np.zeros(n), "p_value": np.ones(n), "fdr": np.ones(n)}
        )

    monkeypatch.setitem(sys.modules, "pdex", types.SimpleNamespace(pdex=resetting_pdex))
    monkeypatch.setattr(overlap_module, "resolve_backend", lambda backend: "cell-eval")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        de_table({"A": real}, control, GENES, backend="cell-eval")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
