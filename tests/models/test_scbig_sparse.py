"""scbig on sparse data: a CSR screen fits like its dense copy, and fitting sees a bounded sample."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from _configs import TINY_SCBIG

from perturbflow.data import read
from perturbflow.data.conditions import CONTROL_NAME
from perturbflow.data.io import PerturbationDataset
from perturbflow.models.scbig import ScBIG, ScBIGConfig, objectives
from perturbflow.models.scbig.model import _PooledCells
from perturbflow.models.scbig.modules import PCAAutoencoder

# Two flow steps and a fixed mean weight: enough to compare two fits, not to judge accuracy.
QUICK = dataclasses.replace(
    TINY_SCBIG, flow_steps=4, ae_epochs=1, mean_weight=0.5, shape_weight=1.0
)


@pytest.fixture(scope="module")
def screens(simulated_screen, screen_data):
    """The tiny screen read as stored (dense) and with ``X`` as CSR, with its split."""
    dense, split = screen_data("tiny")
    adata = simulated_screen("tiny")
    adata.X = sp.csr_matrix(adata.X)
    del adata.layers["counts"]
    return dense, read(adata), split


@pytest.mark.parametrize("autoencoder", ["pca", "gcae"])
def test_sparse_and_dense_copies_predict_the_same_cells(screens, autoencoder):
    dense, sparse, split = screens
    config = dataclasses.replace(QUICK, autoencoder=autoencoder)
    assert sp.issparse(sparse.adata.X) and not sp.issparse(dense.adata.X)
    conditions = list(split.test)
    predicted = [
        ScBIG(config).fit(data, split).predict(conditions, n_cells=20, seed=1).X
        for data in (dense, sparse)
    ]
    # Sparse means are float64 sums, dense ones float32: equal to rounding.
    np.testing.assert_allclose(predicted[1], predicted[0], atol=1e-4)


def _recording_fits(monkeypatch) -> list[int]:
    """Numbers of cells each PCA fit and autoencoder objective is given."""
    seen: list[int] = []
    pca_fit = PCAAutoencoder.fit
    objective_init = objectives.AutoencoderObjective.__init__

    def fit(self, expression):
        seen.append(len(expression))
        return pca_fit(self, expression)

    def init(self, autoencoder, train_cells, *args, **kwargs):
        seen.append(len(train_cells))
        objective_init(self, autoencoder, train_cells, *args, **kwargs)

    monkeypatch.setattr(PCAAutoencoder, "fit", fit)
    monkeypatch.setattr(objectives.AutoencoderObjective, "__init__", init)
    return seen


@pytest.mark.parametrize("autoencoder", ["pca", "gcae"])
def test_the_autoencoder_sees_at_most_max_fit_cells(screens, autoencoder, monkeypatch):
    _, sparse, split = screens
    n_train = int(sparse.cell_mask(list(split.train)).sum())
    seen = _recording_fits(monkeypatch)
    ScBIG(dataclasses.replace(QUICK, autoencoder=autoencoder)).fit(sparse, split)
    assert seen == [n_train]  # below the default cap: every training cell
    seen.clear()
    capped = dataclasses.replace(QUICK, autoencoder=autoencoder, max_fit_cells=150)
    ScBIG(capped).fit(sparse, split)
    assert seen == [150]


def test_a_capped_fit_densifies_no_more_than_the_cap(screens, monkeypatch):
    _, sparse, split = screens
    cap = 150
    densified: list[int] = []
    toarray = sp.csr_matrix.toarray

    def recorded(self, *args, **kwargs):
        densified.append(self.shape[0])
        return toarray(self, *args, **kwargs)

    expression = PerturbationDataset.expression

    def control_only(self, name):
        # The start model (calibrated_additive, a baseline) reads the control cells densely.
        assert name == CONTROL_NAME, f"a sparse fit densified all cells of {name!r}"
        return expression(self, name)

    monkeypatch.setattr(sp.csr_matrix, "toarray", recorded)
    monkeypatch.setattr(PerturbationDataset, "expression", control_only)
    model = ScBIG(dataclasses.replace(QUICK, max_fit_cells=cap)).fit(sparse, split)
    n_control = int(sparse.cell_mask(CONTROL_NAME).sum())
    assert n_control > cap
    assert densified and sorted(set(densified))[-2:] == [cap, n_control]  # control: see above
    assert model.predict(list(split.test), n_cells=5).n_obs == 5 * len(split.test)


def test_flow_pools_share_the_cap_between_conditions(screens):
    _, sparse, split = screens
    model = ScBIG(dataclasses.replace(QUICK, max_fit_cells=150))
    rows = {name: np.arange(100) + 1000 * i for i, name in enumerate(["a", "b", "c"])}
    pools = model._pool_rows(rows, ["a", "b", "c"])
    assert [len(pools[name]) for name in "abc"] == [50, 50, 50]
    assert all(np.all(np.diff(pools[name]) > 0) for name in "abc")  # sorted, distinct
    assert model._pool_rows(rows, ["a"])["a"] is rows["a"]  # under the cap: every cell


def test_pooled_cells_index_like_the_dense_rows(screens):
    dense, sparse, _ = screens
    rows = np.array([3, 7, 11, 40])
    index = torch.tensor([2, 0, 2])
    cells = _PooledCells(sparse.adata.X, rows)
    assert len(cells) == 4
    expected = torch.from_numpy(np.asarray(dense.adata.X)[rows[index.numpy()]])
    torch.testing.assert_close(cells[index], expected)


@pytest.mark.parametrize("value", [0, -5])
def test_max_fit_cells_must_be_positive(value):
    with pytest.raises(ValueError, match="max_fit_cells"):
        ScBIGConfig(max_fit_cells=value)
