"""read() on generated AnnData: a validated dataset or a DataValidationError, never a traceback
from inside numpy or anndata; each hazard of real files checked by name."""

from __future__ import annotations

import logging
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from perturbflow.data.io import (
    CONDITION_COLUMN,
    DataValidationError,
    SmallConditionWarning,
    read,
)

GENES = ["KLF1", "MAP2K6", "CEBPA", "GATA1", "SPI1", "TP53"]


def screen(
    labels=("ctrl",) * 4 + ("KLF1",) * 3 + ("MAP2K6",) * 3,
    matrix=None,
    genes=GENES,
    cells=None,
) -> ad.AnnData:
    n_cells = len(labels)
    if matrix is None:
        matrix = np.random.default_rng(0).poisson(5, (n_cells, len(genes))) + 1
    obs = pd.DataFrame(
        {"condition": list(labels)}, index=cells or [f"cell{i}" for i in range(n_cells)]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # anndata's own note on duplicated names
        return ad.AnnData(X=matrix, obs=obs, var=pd.DataFrame(index=list(genes)))


def read_quietly(adata, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # small conditions, duplicated names
        return read(adata, **options)


@st.composite
def generated_screens(draw):
    """Small screens mixing every hazard: odd values, dtypes, labels, names and layouts."""
    n_genes = draw(st.integers(1, 6))
    n_cells = draw(st.integers(1, 12))
    dtype = draw(st.sampled_from([np.int32, np.int64, np.uint16, np.float32, np.float64]))
    values = draw(
        st.lists(
            st.sampled_from([0, 0, 1, 3, 7.5, -1, np.nan, np.inf, 2**40]),
            min_size=n_cells * n_genes,
            max_size=n_cells * n_genes,
        )
    )
    matrix = np.array(values, dtype=np.float64).reshape(n_cells, n_genes)
    if np.issubdtype(dtype, np.integer):
        matrix = np.nan_to_num(matrix, nan=0, posinf=0)
        matrix = np.clip(matrix, 0 if dtype == np.uint16 else -1, np.iinfo(dtype).max)
    matrix = matrix.astype(dtype)
    labels = draw(
        st.lists(
            st.sampled_from(["ctrl", "KLF1", "KLF1+MAP2K6", "MAP2K6+ctrl", "", "nan", "A++B"]),
            min_size=n_cells,
            max_size=n_cells,
        )
    )
    genes = draw(
        st.lists(
            st.sampled_from([*GENES, "ENSG00000102145", "ENSG00000105647"]),
            min_size=n_genes,
            max_size=n_genes,
        )
    )
    cells = draw(
        st.lists(st.sampled_from(["a", "b", "c", "d"]), min_size=n_cells, max_size=n_cells)
        | st.just(None)
    )
    adata = screen(labels, matrix, genes, cells)
    if draw(st.booleans()):
        adata.X = sp.csr_matrix(adata.X)
    if draw(st.booleans()):
        adata.obs["condition"] = pd.Categorical(
            adata.obs["condition"], categories=sorted({*labels, "UNUSED"})
        )
    return adata


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(generated_screens())
def test_read_gives_a_valid_dataset_or_a_data_validation_error(adata):
    logging.disable(logging.WARNING)
    try:
        dataset = read_quietly(adata)
    except DataValidationError as error:
        assert str(error).startswith("<AnnData>: ")
        return
    finally:
        logging.disable(logging.NOTSET)
    matrix = dataset.adata.X.toarray() if sp.issparse(dataset.adata.X) else dataset.adata.X
    assert np.isfinite(matrix).all() and (matrix >= 0).all()
    assert "ctrl" in dataset.conditions
    assert dataset.adata.obs_names.is_unique and dataset.adata.var_names.is_unique
    assert (dataset.cells_per_condition > 0).all()
    assert set(dataset.adata.obs[CONDITION_COLUMN].cat.categories) == set(dataset.conditions)


@pytest.mark.parametrize("value, what", [(np.nan, "1 NaN"), (np.inf, "1 infinite")])
def test_nan_and_inf_are_refused(value, what):
    matrix = np.ones((10, 6))
    matrix[2, 3] = value
    with pytest.raises(DataValidationError, match=f"X has .*{what}.*remove or impute"):
        read(screen(matrix=matrix))


def test_negative_counts_are_refused():
    matrix = np.ones((10, 6), dtype=np.int64)
    matrix[0, 0] = -4
    with pytest.raises(DataValidationError, match="1 negative value.*minimum -4.*not scaled"):
        read(screen(matrix=matrix))


def test_float_counts_that_are_not_integers_are_read_as_log_data_with_a_warning(caplog):
    matrix = np.random.default_rng(0).uniform(0.5, 300.0, (10, 6))
    with caplog.at_level(logging.WARNING):
        dataset = read_quietly(screen(matrix=matrix))
    assert dataset.normalization == "log1p (as provided)"
    assert "large for log1p CP10k data; check it is log-normalised" in caplog.text


def test_integer_valued_float_counts_are_normalised():
    matrix = np.random.default_rng(0).poisson(5, (10, 6)).astype(np.float32) + 1
    dataset = read_quietly(screen(matrix=matrix))
    assert dataset.normalization == "log1p_cp10k"
    assert np.allclose(np.expm1(dataset.adata.X).sum(axis=1), 1e4, rtol=1e-4)


def test_duplicated_gene_names_are_refused():
    with pytest.raises(DataValidationError, match="1 duplicate gene name.*KLF1"):
        read(screen(genes=["KLF1", "KLF1", "CEBPA", "GATA1", "SPI1", "TP53"]))


def test_duplicated_cell_names_are_made_unique_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        dataset = read_quietly(screen(cells=["bc1"] * 5 + ["bc2"] * 5))
    assert dataset.adata.obs_names.is_unique and dataset.adata.n_obs == 10
    assert "2 cell name(s) occur more than once in obs_names (first: bc1, bc2)" in caplog.text


def test_empty_categories_never_become_conditions():
    adata = screen()
    adata.obs["condition"] = pd.Categorical(
        adata.obs["condition"], categories=["ctrl", "KLF1", "MAP2K6", "GATA1", "GATA1+SPI1"]
    )
    dataset = read_quietly(adata)
    assert dataset.conditions == ["KLF1", "MAP2K6", "ctrl"]


def test_a_condition_with_one_cell_is_kept_with_a_warning():
    labels = ("ctrl",) * 5 + ("KLF1",) * 4 + ("GATA1",)
    with pytest.warns(SmallConditionWarning, match=r"GATA1 \(1\)"):
        dataset = read(screen(labels=labels), min_cells=2)
    assert dataset.cells_per_condition["GATA1"] == 1


def test_control_with_one_cell_is_kept_with_a_warning():
    labels = ("ctrl",) + ("KLF1",) * 9
    with pytest.warns(SmallConditionWarning, match=r"ctrl \(1\)"):
        dataset = read(screen(labels=labels), min_cells=2)
    assert dataset.control_expression().shape == (1, 6)


def test_all_zero_genes_are_kept_and_stay_zero():
    matrix = np.random.default_rng(0).poisson(5, (10, 6)) + 1
    matrix[:, [1, 4]] = 0
    dataset = read_quietly(screen(matrix=matrix))
    assert dataset.n_genes == 6
    assert np.isfinite(dataset.adata.X).all()
    assert (dataset.adata.X[:, [1, 4]] == 0).all()


def test_ensembl_ids_without_symbols_are_refused_with_the_gene_key_to_use():
    adata = screen(genes=[f"ENSG0000010{i:04d}" for i in range(6)])
    adata.var["gene_symbol"] = GENES
    with pytest.raises(
        DataValidationError,
        match=r"var_names are Ensembl ids.*none of the 2 perturbed genes is measured.*"
        r"pass gene_key='gene_symbol'",
    ):
        read(adata)
    dataset = read_quietly(adata, gene_key="gene_symbol")
    assert dataset.unmeasured_genes == frozenset()


def test_ensembl_ids_in_both_var_names_and_conditions_are_fine():
    ids = [f"ENSG0000010{i:04d}" for i in range(6)]
    labels = ("ctrl",) * 4 + (ids[0],) * 3 + (ids[1],) * 3
    dataset = read_quietly(screen(labels=labels, genes=ids))
    assert dataset.perturbations == sorted(ids[:2])


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_counts_whose_integer_sum_overflows_are_not_dropped(sparse):
    """Four genes of 2**62 counts sum to 2**64, which int64 wraps to 0: a "zero-count" cell."""
    matrix = np.full((10, 4), 2**62, dtype=np.int64)
    adata = screen(matrix=sp.csr_matrix(matrix) if sparse else matrix, genes=GENES[:4])
    dataset = read_quietly(adata)
    assert dataset.adata.n_obs == 10
    expression = dataset.adata.X.toarray() if sparse else dataset.adata.X
    assert np.allclose(expression, np.log1p(1e4 / 4))


def test_complex_or_text_matrices_are_refused_by_dtype():
    for matrix, dtype in ((np.ones((10, 6), dtype=complex), "complex128"),):
        with pytest.raises(DataValidationError, match=f"X has dtype {dtype}.*integer counts"):
            read(screen(matrix=matrix))


def test_truncated_h5ad_is_a_data_validation_error(tmp_path, simulated_screen):
    path = tmp_path / "screen.h5ad"
    simulated_screen("tiny").write_h5ad(path)
    path.write_bytes(path.read_bytes()[:4096])
    with pytest.raises(DataValidationError, match=r"screen\.h5ad: cannot be read as an \.h5ad"):
        read(path)
