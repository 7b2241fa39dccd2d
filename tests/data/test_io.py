"""Reading Perturb-seq data: what `read` accepts, what it repairs, and how it says what is wrong."""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from perturbflow.data.io import (
    CONDITION_COLUMN,
    DataFileNotFoundError,
    DataValidationError,
    PerturbationDataset,
    ReadOptions,
    SmallConditionWarning,
    read,
)

GENES = ("A", "B", "C", "D", "E")
CONDITIONS = ("ctrl", "A", "B", "A+B")


def log1p_cp10k(counts: np.ndarray) -> np.ndarray:
    """The normalisation `read` applies to raw counts, written out by hand."""
    return np.log1p(counts / counts.sum(axis=1, keepdims=True) * 1e4)


def make_adata(
    conditions: Sequence[str] = CONDITIONS,
    n_cells: int | Sequence[int] = 12,
    *,
    counts: bool = True,
    sparse: bool = False,
    genes: Sequence[str] = GENES,
    seed: int = 0,
) -> ad.AnnData:
    """A tiny Perturb-seq AnnData: `n_cells` cells per condition label, one gene per column.

    With ``counts=True`` X holds integer counts (every cell ≥ 1 count per gene, so no cell is
    empty); otherwise X is already log1p CP10k.
    """
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.asarray(conditions, dtype=object), n_cells)
    x = rng.poisson(3.0, size=(len(labels), len(genes))).astype(np.float32) + 1  # (cells, genes)
    if not counts:
        x = log1p_cp10k(x).astype(np.float32)
    obs = pd.DataFrame(
        {"condition": labels, "batch": "b1"},
        index=[f"cell{i}" for i in range(len(labels))],
    )
    var = pd.DataFrame(index=list(genes))
    return ad.AnnData(X=sp.csr_matrix(x) if sparse else x, obs=obs, var=var)


def write(adata: ad.AnnData, path: Path) -> Path:
    adata.write_h5ad(path)
    return path


def dense(matrix) -> np.ndarray:
    return matrix.toarray() if sp.issparse(matrix) else np.asarray(matrix)


@pytest.fixture
def counts_adata() -> ad.AnnData:
    return make_adata()


@pytest.fixture
def log_adata() -> ad.AnnData:
    return make_adata(counts=False)


@pytest.fixture
def dataset(log_adata) -> PerturbationDataset:
    return read(log_adata)


# --- files: missing, wrong kind, unreadable ---------------------------------------------------


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nowhere" / "data.h5ad"
    with pytest.raises(DataFileNotFoundError, match=re.escape(str(path)) + ".*file not found"):
        read(path)


def test_missing_file_error_is_both_a_validation_and_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        read(tmp_path / "data.h5ad")
    with pytest.raises(DataValidationError):
        read(str(tmp_path / "data.h5ad"))


def test_a_folder_is_not_a_data_file(tmp_path):
    folder = tmp_path / "data.h5ad"
    folder.mkdir()
    with pytest.raises(DataValidationError, match="is a folder"):
        read(folder)


def test_wrong_suffix_is_rejected_with_the_suffix(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("cell,condition\nc1,ctrl\n")
    with pytest.raises(DataValidationError, match=r"unsupported file type '\.csv'.*\.h5ad"):
        read(path)


def test_garbage_bytes_are_not_an_h5ad(tmp_path):
    path = tmp_path / "x.h5ad"
    path.write_bytes(b"\x00\x01 definitely not HDF5 \xff" * 20)
    with pytest.raises(DataValidationError, match=r"x\.h5ad: cannot be read as an \.h5ad file"):
        read(path)


def test_truncated_h5ad_is_not_an_h5ad(tmp_path, counts_adata):
    path = write(counts_adata, tmp_path / "full.h5ad")
    truncated = tmp_path / "truncated.h5ad"
    truncated.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(DataValidationError, match="cannot be read as an .h5ad file"):
        read(truncated)


# --- obs / var columns ------------------------------------------------------------------------


def test_missing_condition_column_lists_columns_and_suggests_a_close_match(counts_adata):
    with pytest.raises(DataValidationError) as error:
        read(counts_adata, condition_key="conditon")
    message = str(error.value)
    assert "obs has no column 'conditon'" in message
    assert "did you mean 'condition'?" in message
    assert "available columns: condition, batch" in message


def test_missing_cell_type_column_is_reported(counts_adata):
    with pytest.raises(DataValidationError, match="no cell-type column 'cell_type'"):
        read(counts_adata, cell_type_key="cell_type")


def test_cell_type_column_is_kept(counts_adata):
    counts_adata.obs["cell_line"] = "K562"
    dataset = read(counts_adata, cell_type_key="cell_line")
    assert dataset.cell_type_key == "cell_line"
    assert (dataset.adata.obs["cell_line"] == "K562").all()


@pytest.mark.parametrize("spelling", ["Ctrl_cells", "non-targetting"])
def test_no_control_cells_suggests_the_label_the_data_uses(spelling):
    adata = make_adata((spelling, "A", "B"))
    with pytest.raises(DataValidationError) as error:
        read(adata)
    message = str(error.value)
    assert "no control cells" in message
    assert f"Did you mean {spelling!r}? Pass control={spelling!r}" in message


def test_custom_control_label_is_accepted():
    dataset = read(make_adata(("Ctrl_cells", "A", "B")), control="Ctrl_cells")
    assert dataset.conditions == ["A", "B", "ctrl"]


@pytest.mark.filterwarnings("ignore:Variable names are not unique:UserWarning")
def test_duplicate_var_names_are_named():
    adata = make_adata(genes=("A", "B", "C", "B", "E"))
    with pytest.raises(DataValidationError, match=r"1 duplicate gene name\(s\) in var_names: B\."):
        read(adata)


def test_duplicate_symbols_in_gene_key_are_named(counts_adata):
    counts_adata.var_names = [f"ENSG{i:05d}" for i in range(counts_adata.n_vars)]
    counts_adata.var["symbol"] = ["A", "B", "C", "D", "D"]
    with pytest.raises(
        DataValidationError, match=r"duplicate gene name\(s\) in var\['symbol'\]: D"
    ):
        read(counts_adata, gene_key="symbol")


def test_missing_gene_key_column_suggests_a_close_match(counts_adata):
    counts_adata.var["symbol"] = list(GENES)
    with pytest.raises(
        DataValidationError, match=r"var has no column 'symbl' \(did you mean 'symbol'\?\)"
    ):
        read(counts_adata, gene_key="symbl")


def test_missing_gene_symbols_are_counted(counts_adata):
    counts_adata.var["symbol"] = ["A", "B", None, "D", "E"]
    with pytest.raises(DataValidationError, match=r"var\['symbol'\] has 1 missing gene symbol"):
        read(counts_adata, gene_key="symbol")


def test_gene_symbols_come_from_the_gene_key_column(counts_adata):
    ensembl = [f"ENSG{i:05d}" for i in range(counts_adata.n_vars)]
    counts_adata.var_names = ensembl
    counts_adata.var["symbol"] = list(GENES)
    dataset = read(counts_adata, gene_key="symbol")
    assert list(dataset.genes) == list(GENES)
    assert dataset.n_genes == len(GENES)
    assert list(counts_adata.var_names) == ensembl  # the caller's object keeps its IDs


# --- expression values --------------------------------------------------------------------------


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize(
    ("bad_value", "problem"),
    [(np.nan, "1 NaN and 0 infinite"), (np.inf, "0 NaN and 1 infinite")],
)
def test_non_finite_values_are_rejected(sparse, bad_value, problem):
    adata = make_adata(counts=False)
    adata.X[3, 2] = bad_value
    if sparse:
        adata.X = sp.csr_matrix(adata.X)
    with pytest.raises(DataValidationError, match=problem):
        read(adata)


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_negative_values_are_rejected_as_scaled_data(sparse):
    adata = make_adata(counts=False)
    adata.X[0, 0] = -1.5
    if sparse:
        adata.X = sp.csr_matrix(adata.X)
    with pytest.raises(
        DataValidationError, match=r"1 negative value\(s\) \(minimum -1\.5\).*scaled"
    ):
        read(adata)


# --- condition labels ---------------------------------------------------------------------------


def test_invalid_condition_label_names_value_and_column():
    adata = make_adata(("ctrl", "A", "A++B"))
    with pytest.raises(
        DataValidationError,
        match=r"obs\['condition'\] value 'A\+\+B' is not a valid condition: .*empty gene",
    ):
        read(adata)


def test_conditions_are_stored_under_their_canonical_names():
    adata = make_adata(("control", "A+ctrl", "B+A", "A+B", "B"))
    dataset = read(adata)
    stored = dataset.adata.obs[CONDITION_COLUMN].astype(str)
    original = adata.obs["condition"].astype(str)
    assert (stored[original == "B+A"] == "A+B").all()
    assert (stored[original == "A+ctrl"] == "A").all()
    assert (stored[original == "control"] == "ctrl").all()
    assert dataset.conditions == ["A", "A+B", "B", "ctrl"]
    assert dataset.perturbations == ["A", "A+B", "B"]
    assert dataset.perturbed_genes == {"A", "B"}
    # The user's own column is kept as written.
    assert list(dataset.adata.obs["condition"].astype(str)) == list(original)


def test_underscore_separator_reads_scperturb_labels():
    dataset = read(make_adata(("control", "A", "B_A")), separator="_")
    assert dataset.conditions == ["A", "A+B", "ctrl"]


def test_unmeasured_perturbed_genes_are_allowed_and_reported(caplog):
    adata = make_adata(("ctrl", "A", "Z", "A+Y"))
    with caplog.at_level(logging.WARNING, logger="perturbflow.data.io"):
        dataset = read(adata)
    assert dataset.unmeasured_genes == {"Y", "Z"}
    assert "2 perturbed gene(s) are not measured" in caplog.text
    assert "Y, Z" in caplog.text


def test_no_warning_when_every_perturbed_gene_is_measured(caplog, counts_adata):
    with caplog.at_level(logging.WARNING, logger="perturbflow.data.io"):
        dataset = read(counts_adata)
    assert dataset.unmeasured_genes == frozenset()
    assert "not measured" not in caplog.text


def test_small_conditions_warn_with_their_name_and_size():
    adata = make_adata(("ctrl", "A", "B"), n_cells=[12, 12, 3])
    with pytest.warns(
        SmallConditionWarning, match=r"1 condition\(s\) have fewer than 10 cells: B \(3\)"
    ):
        read(adata)


def test_min_cells_sets_the_small_condition_threshold(counts_adata):
    with pytest.warns(SmallConditionWarning, match=r"fewer than 20 cells: A \(12\), A\+B \(12\)"):
        read(counts_adata, min_cells=20)


def test_adequately_sized_conditions_do_not_warn(counts_adata):
    with warnings.catch_warnings():
        warnings.simplefilter("error", SmallConditionWarning)
        read(counts_adata)


# --- normalisation ------------------------------------------------------------------------------


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_raw_counts_are_normalised_to_log1p_cp10k(sparse):
    adata = make_adata()
    adata.X[0] = [1, 3, 0, 0, 6]
    counts = adata.X.copy()
    if sparse:
        adata.X = sp.csr_matrix(adata.X)

    dataset = read(adata)

    # Cell 0 has 10 counts: 1, 3 and 6 of them are 1000, 3000 and 6000 per 10k.
    expected_first = np.log1p([1000.0, 3000.0, 0.0, 0.0, 6000.0])
    np.testing.assert_allclose(dense(dataset.adata.X)[0], expected_first, rtol=1e-6)
    np.testing.assert_allclose(dense(dataset.adata.X), log1p_cp10k(counts), rtol=1e-5)
    np.testing.assert_array_equal(dense(dataset.adata.layers["counts"]), counts)
    record = dataset.adata.uns["perturbflow"]
    assert record["normalization"] == "log1p_cp10k"
    assert record["target_sum"] == 1e4
    assert dataset.normalization == "log1p_cp10k"


def test_log_normalised_data_is_left_unchanged(log_adata):
    dataset = read(log_adata)
    np.testing.assert_array_equal(dense(dataset.adata.X), dense(log_adata.X))
    assert "counts" not in dataset.adata.layers
    assert dataset.normalization == "log1p (as provided)"


def test_dense_and_sparse_input_give_identical_expression():
    dense_dataset = read(make_adata(sparse=False))
    sparse_dataset = read(make_adata(sparse=True))
    for name in CONDITIONS:
        np.testing.assert_array_equal(
            dense_dataset.expression(name), sparse_dataset.expression(name)
        )
    assert dense_dataset.expression("A").dtype == np.float32


# --- reading a layer instead of X -----------------------------------------------------------------


def test_a_raw_counts_layer_is_normalised_like_x():
    counts = make_adata()
    log_with_counts = make_adata(counts=False)
    log_with_counts.layers["counts"] = counts.X.copy()

    from_layer = read(log_with_counts, layer="counts")
    from_x = read(counts)

    np.testing.assert_allclose(dense(from_layer.adata.X), dense(from_x.adata.X), rtol=1e-6)
    np.testing.assert_array_equal(dense(from_layer.adata.layers["counts"]), counts.X)
    record = from_layer.adata.uns["perturbflow"]
    assert record["layer"] == "counts"
    assert record["normalization"] == "log1p_cp10k"
    assert from_x.adata.uns["perturbflow"]["layer"] == "X"


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_a_log_normalised_layer_is_used_as_is(sparse):
    adata = make_adata(counts=True, sparse=sparse)
    logged = make_adata(counts=False, seed=1).X
    adata.layers["logcounts"] = sp.csr_matrix(logged) if sparse else logged

    dataset = read(adata, layer="logcounts")

    np.testing.assert_array_equal(dense(dataset.adata.X), logged)
    assert dataset.normalization == "log1p (as provided)"
    assert dataset.adata.uns["perturbflow"]["layer"] == "logcounts"
    assert "counts" not in dataset.adata.layers


def test_a_missing_layer_lists_the_available_layers(counts_adata):
    counts_adata.layers["counts"] = counts_adata.X.copy()
    counts_adata.layers["logcounts"] = np.log1p(counts_adata.X)
    with pytest.raises(DataValidationError) as error:
        read(counts_adata, layer="lognorm")
    message = str(error.value)
    assert "<AnnData>: layers has no 'lognorm'" in message
    assert "available layers: counts, logcounts" in message
    assert "omit layer= to read X" in message


def test_a_missing_layer_in_a_file_without_layers_says_so(counts_adata):
    with pytest.raises(DataValidationError, match="has no 'counts'; the file has no layers"):
        read(counts_adata, layer="counts")


def test_a_file_without_x_asks_for_a_layer(counts_adata):
    adata = ad.AnnData(obs=counts_adata.obs, var=counts_adata.var)
    adata.layers["counts"] = counts_adata.X.copy()
    with pytest.raises(DataValidationError, match=r"X is empty; pass layer=<name>.*layers: counts"):
        read(adata)
    assert read(adata, layer="counts").normalization == "log1p_cp10k"


def test_a_layer_of_a_backed_file_is_read_without_writing_to_it(tmp_path):
    adata = make_adata()
    adata.layers["logcounts"] = log1p_cp10k(adata.X).astype(np.float32)
    path = write(adata, tmp_path / "data.h5ad")
    bytes_before = path.read_bytes()

    dataset = read(path, backed=True, layer="logcounts")

    assert not dataset.adata.isbacked
    np.testing.assert_array_equal(dense(dataset.adata.X), adata.layers["logcounts"])
    assert path.read_bytes() == bytes_before


# --- read never touches the caller's data -------------------------------------------------------


def test_read_never_modifies_the_callers_anndata(counts_adata):
    obs_before = counts_adata.obs.copy()
    x_before = counts_adata.X.copy()
    uns_keys_before = set(counts_adata.uns)

    read(counts_adata)

    pd.testing.assert_frame_equal(counts_adata.obs, obs_before)
    np.testing.assert_array_equal(counts_adata.X, x_before)
    assert set(counts_adata.uns) == uns_keys_before
    assert "counts" not in counts_adata.layers


@pytest.mark.parametrize("counts", [True, False], ids=["counts", "log"])
@pytest.mark.parametrize("backed", [False, True], ids=["memory", "backed"])
def test_read_never_writes_to_the_users_file(tmp_path, counts, backed):
    path = write(make_adata(counts=counts), tmp_path / "data.h5ad")
    bytes_before = path.read_bytes()
    mtime_before = path.stat().st_mtime_ns

    dataset = read(path, backed=backed)
    dataset.adata.obs["extra"] = 1  # even changes made afterwards stay in memory
    dataset.mean_expression()
    if dataset.adata.isbacked:
        dataset.adata.file.close()

    assert path.read_bytes() == bytes_before
    assert path.stat().st_mtime_ns == mtime_before


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("counts", [True, False], ids=["counts", "log"])
def test_backed_mode_gives_the_same_expression_as_in_memory(tmp_path, counts, sparse):
    path = write(make_adata(counts=counts, sparse=sparse), tmp_path / "data.h5ad")
    in_memory = read(path)
    backed = read(path, backed=True)
    # Counts must be normalised in memory; log data can stay on disk.
    assert backed.adata.isbacked is (not counts)
    for name in CONDITIONS:
        np.testing.assert_allclose(backed.expression(name), in_memory.expression(name))
    pd.testing.assert_frame_equal(backed.mean_expression(), in_memory.mean_expression())
    assert backed.normalization == in_memory.normalization
    subset = backed.subset(["ctrl", "A"])
    assert not subset.adata.isbacked
    np.testing.assert_allclose(subset.expression("A"), in_memory.expression("A"))
    if backed.adata.isbacked:
        backed.adata.file.close()


@pytest.mark.parametrize("counts", [True, False], ids=["counts", "log"])
def test_backed_mode_warns_when_it_must_load_the_matrix(tmp_path, counts, caplog):
    path = write(make_adata(counts=counts), tmp_path / "data.h5ad")
    with caplog.at_level(logging.WARNING, logger="perturbflow.data.io"):
        dataset = read(path, backed=True)
    loaded = [r.getMessage() for r in caplog.records if "into memory" in r.getMessage()]
    if counts:
        assert len(loaded) == 1 and "normalising raw counts" in loaded[0]
        assert str(path) in loaded[0] and not dataset.adata.isbacked
    else:
        assert loaded == [] and dataset.adata.isbacked
        dataset.adata.file.close()


def test_a_backed_anndata_object_is_loaded_into_memory(tmp_path, log_adata):
    path = write(log_adata, tmp_path / "data.h5ad")
    opened = ad.read_h5ad(path, backed="r")
    dataset = read(opened)
    opened.file.close()
    assert not dataset.adata.isbacked
    np.testing.assert_array_equal(dataset.expression("ctrl"), dense(log_adata.X[:12]))


# --- the dataset object -------------------------------------------------------------------------


def test_cells_per_condition(dataset):
    expected = pd.Series({"A": 12, "A+B": 12, "B": 12, "ctrl": 12})
    assert dataset.cells_per_condition.to_dict() == expected.to_dict()
    assert list(dataset.cells_per_condition.index) == ["A", "A+B", "B", "ctrl"]


def test_cell_mask_selects_the_cells_of_one_or_more_conditions(dataset, log_adata):
    labels = log_adata.obs["condition"].to_numpy()
    np.testing.assert_array_equal(dataset.cell_mask("A"), labels == "A")
    np.testing.assert_array_equal(dataset.cell_mask(["A", "ctrl"]), np.isin(labels, ["A", "ctrl"]))


def test_cell_mask_of_an_unknown_condition_names_it(dataset):
    with pytest.raises(KeyError, match=r"\['Q'\] not in dataset.*known conditions: A, A\+B"):
        dataset.cell_mask(["A", "Q"])


def test_cell_mask_wants_canonical_names(dataset):
    with pytest.raises(KeyError, match=r"B\+A"):
        dataset.cell_mask("B+A")


def test_expression_and_control_expression(dataset, log_adata):
    x = dense(log_adata.X)
    labels = log_adata.obs["condition"].to_numpy()
    np.testing.assert_array_equal(dataset.expression("A+B"), x[labels == "A+B"])
    np.testing.assert_array_equal(dataset.control_expression(), x[labels == "ctrl"])
    assert dataset.expression(["A", "B"]).shape == (24, len(GENES))


def test_mean_expression_is_a_conditions_by_genes_table(dataset, log_adata):
    x = dense(log_adata.X)
    labels = log_adata.obs["condition"].to_numpy()
    means = dataset.mean_expression()
    assert list(means.index) == ["A", "A+B", "B", "ctrl"]
    assert list(means.columns) == list(GENES)
    for name in means.index:
        np.testing.assert_allclose(means.loc[name], x[labels == name].mean(axis=0), rtol=1e-6)
    # Rows follow the requested order, each labelled with its own condition.
    chosen = dataset.mean_expression(["ctrl", "A"])
    assert list(chosen.index) == ["ctrl", "A"]
    np.testing.assert_allclose(chosen.loc["ctrl"], x[labels == "ctrl"].mean(axis=0), rtol=1e-6)


def test_variance_expression_is_each_condition_s_sample_variance_sparse_or_dense(log_adata):
    x = dense(log_adata.X).astype(np.float64)
    labels = log_adata.obs["condition"].to_numpy()
    sparse = log_adata.copy()
    sparse.X = sp.csr_matrix(dense(log_adata.X))
    for data in (read(log_adata), read(sparse)):
        variances = data.variance_expression()
        assert list(variances.index) == ["A", "A+B", "B", "ctrl"]
        for name in variances.index:
            expected = x[labels == name].var(axis=0, ddof=1)
            np.testing.assert_allclose(variances.loc[name], expected, rtol=1e-5, atol=1e-7)
    one = log_adata[(labels != "A") | (np.cumsum(labels == "A") == 1)].copy()  # A: one cell
    assert read(one).variance_expression(["A"]).isna().all(axis=None)


# A subset is a real copy, never an AnnData view that anndata silently turns into one.
@pytest.mark.filterwarnings("error::anndata.ImplicitModificationWarning")
def test_subset_keeps_only_the_named_conditions(dataset):
    small = dataset.subset(["ctrl", "A+B"])
    assert small.conditions == ["A+B", "ctrl"]
    assert small.adata.n_obs == 24
    assert not small.adata.is_view
    assert list(small.adata.obs[CONDITION_COLUMN].cat.categories) == ["A+B", "ctrl"]
    np.testing.assert_array_equal(small.expression("A+B"), dataset.expression("A+B"))
    # The subset is a copy: editing it leaves the full dataset alone.
    small.adata.X[:] = 0
    assert dataset.expression("A+B").sum() > 0


def test_repr_summarises_the_dataset(dataset):
    text = repr(dataset)
    assert "48 cells × 5 genes" in text
    assert "3 perturbations" in text
    assert "source='<AnnData>'" in text


def test_sparse_means_equal_dense_means_without_a_dense_copy(simulated_screen):
    import scipy.sparse as sp

    from perturbflow.data import read

    adata = simulated_screen("tiny")
    dense = read(adata)
    adata.X = sp.csr_matrix(adata.X)
    stored = read(adata)
    assert sp.issparse(stored.matrix(["ctrl"]))
    np.testing.assert_allclose(
        stored.mean_expression().to_numpy(), dense.mean_expression().to_numpy(), atol=1e-5
    )


def test_read_options_carry_backed_mode(tmp_path):
    path = write(make_adata(counts=False), tmp_path / "data.h5ad")
    dataset = ReadOptions(backed=True).read(path)
    assert dataset.adata.isbacked
    dataset.adata.file.close()
    assert not ReadOptions().read(path).adata.isbacked


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_rows_returns_stored_rows_by_position(tmp_path, sparse):
    path = write(make_adata(counts=False, sparse=sparse), tmp_path / "data.h5ad")
    for backed in (False, True):
        dataset = read(path, backed=backed)
        positions = np.array([0, 3, 7])
        rows = dataset.rows(positions)
        assert sp.issparse(rows) is sparse
        expected = dense(read(path).adata.X)[positions]
        np.testing.assert_array_equal(dense(rows), expected)
        with pytest.raises(ValueError, match="increasing"):
            dataset.rows(np.array([3, 0]))
        if backed:
            dataset.adata.file.close()


def test_backed_condition_means_are_read_from_the_file_once(tmp_path):
    path = write(make_adata(counts=False), tmp_path / "data.h5ad")
    backed, in_memory = read(path, backed=True), read(path)
    first = backed.mean_expression(["A", "ctrl"])
    backed.adata.file.close()  # the means now come from memory, not the file
    pd.testing.assert_frame_equal(
        backed.mean_expression(["ctrl", "A", "A"]), first.loc[["ctrl", "A", "A"]]
    )
    pd.testing.assert_frame_equal(first, in_memory.mean_expression(["A", "ctrl"]))
