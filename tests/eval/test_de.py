"""DE genes: the GEARS definition recovers planted up- and down-regulated genes."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from perturbflow.data import CONDITION_COLUMN, read
from perturbflow.eval import DEError, de_genes

N_GENES = 30
# condition -> (genes shifted up, genes shifted down)
PLANTED = {
    "A": ([5, 6, 7], [8, 9]),
    "A+B": ([10, 11], [12, 13, 14]),
    "B": ([15, 16, 17, 18, 19], []),
}


def _dataset(cells_per_condition=None, seed=0):
    """Log-normalised-like data: control mean in [2, 4], noise sd 0.2, planted shifts of 1.5."""
    rng = np.random.default_rng(seed)
    counts = {"ctrl": 60, "A": 30, "A+B": 30, "B": 30, **(cells_per_condition or {})}
    base = rng.uniform(2.0, 4.0, N_GENES)  # (G,)
    blocks, labels = [], []
    for name, n in counts.items():
        mean = base.copy()
        up, down = PLANTED.get(name, ([], []))
        mean[up] += 1.5
        mean[down] -= 1.5
        blocks.append(mean + rng.normal(0.0, 0.2, (n, N_GENES)))  # (n, G)
        labels += [name] * n
    genes = [f"G{i}" for i in range(N_GENES)]
    adata = ad.AnnData(
        X=np.clip(np.vstack(blocks), 0.0, None).astype(np.float32),
        obs=pd.DataFrame({"condition": labels}, index=[f"c{i}" for i in range(len(labels))]),
        var=pd.DataFrame(index=genes),
    )
    return read(adata, min_cells=1)


def test_de_genes_recover_planted_up_and_down_genes():
    dataset = _dataset()
    top = de_genes(dataset, ["A", "A+B", "B"], n_top=5)
    assert set(top) == {"A", "A+B", "B"}
    for name, (up, down) in PLANTED.items():
        assert top[name].dtype == np.int64
        assert set(top[name]) == set(up) | set(down)


def test_de_genes_default_is_top_20_by_absolute_score():
    dataset = _dataset()
    top = de_genes(dataset, ["A"])
    assert top["A"].shape == (20,)
    assert len(set(top["A"])) == 20
    assert set(top["A"][:5]) == {5, 6, 7, 8, 9}


def test_de_genes_index_into_dataset_genes_whatever_their_order():
    dataset = _dataset()
    order = np.random.default_rng(3).permutation(N_GENES)
    shuffled = read(dataset.adata[:, order].copy(), min_cells=1)
    top = de_genes(shuffled, ["A"], n_top=5)
    assert set(shuffled.genes[top["A"]]) == {f"G{i}" for i in [5, 6, 7, 8, 9]}


def test_de_genes_never_modify_the_dataset():
    dataset = _dataset()
    before_obs = dataset.adata.obs.copy()
    before_x = dataset.adata.X.copy()
    de_genes(dataset, ["A", "B"], n_top=3)
    assert "rank_genes_groups" not in dataset.adata.uns
    pd.testing.assert_frame_equal(dataset.adata.obs, before_obs)
    np.testing.assert_array_equal(dataset.adata.X, before_x)


def test_de_genes_is_deterministic_and_independent_of_other_conditions():
    dataset = _dataset()
    alone = de_genes(dataset, ["B"], n_top=10)
    together = de_genes(dataset, ["A", "B"], n_top=10)
    np.testing.assert_array_equal(alone["B"], together["B"])


def test_conditions_with_fewer_than_two_cells_raise():
    dataset = _dataset({"C": 1})
    with pytest.raises(DEError, match=r"'C' \(1\)"):
        de_genes(dataset, ["A", "C"])


def test_unknown_condition_and_reference_raise():
    dataset = _dataset()
    with pytest.raises(DEError, match="'Z'"):
        de_genes(dataset, ["A", "Z"])
    with pytest.raises(DEError, match="reference"):
        de_genes(dataset, ["ctrl"])


def test_n_top_is_capped_at_the_number_of_genes():
    dataset = _dataset()
    assert de_genes(dataset, ["A"], n_top=100)["A"].shape == (N_GENES,)
    assert CONDITION_COLUMN in dataset.adata.obs


def test_the_de_test_hands_back_torchs_openmp_thread_count(monkeypatch):
    """numba under scanpy resets the thread count of torch's OpenMP runtime; de_genes must hand
    it back, or every model fitted after the first evaluation runs on other threads."""
    torch = pytest.importorskip("torch")
    import scanpy as sc

    original = sc.tl.rank_genes_groups

    def resetting(*args, **kwargs):
        original(*args, **kwargs)
        torch.set_num_threads(2)  # what numba's first OpenMP launch does to torch's runtime

    monkeypatch.setattr(sc.tl, "rank_genes_groups", resetting)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        top = de_genes(_dataset(), ["A"], n_top=5)
        assert set(top["A"]) == {5, 6, 7, 8, 9}
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
