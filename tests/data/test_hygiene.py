"""What `read` drops or warns about in a real screen: unassigned cells, empty cells, few genes."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from perturbflow.data.io import (
    CONDITION_COLUMN,
    MIN_GENES_FOR_NORMALISATION,
    UNASSIGNED_LABELS,
    DataValidationError,
    ReadOptions,
    read,
)

LOGGER = "perturbflow.data.io"


def screen(
    labels: Sequence[object],
    *,
    n_genes: int = 5,
    counts: bool = True,
    categorical: bool = False,
    seed: int = 0,
) -> ad.AnnData:
    """One cell per label; genes ``G0, G1, ...`` plus ``A`` and ``B``; every cell ≥ 1 count/gene."""
    rng = np.random.default_rng(seed)
    genes = ["A", "B", *(f"G{i}" for i in range(n_genes - 2))]
    x = rng.poisson(3.0, size=(len(labels), n_genes)).astype(np.float32) + 1  # (cells, genes)
    if not counts:
        x = np.log1p(x / x.sum(axis=1, keepdims=True) * 1e4).astype(np.float32)
    column = pd.Series(list(labels), dtype=object)
    obs = pd.DataFrame(
        {"condition": pd.Categorical(column) if categorical else column.to_numpy()},
        index=[f"cell{i}" for i in range(len(labels))],
    )
    return ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=genes))


def assigned(n: int = 6) -> list[str]:
    return ["ctrl"] * n + ["A"] * n + ["B"] * n + ["A+B"] * n


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


# --- cells with no perturbation assigned ---------------------------------------------------------


@pytest.mark.parametrize(
    "label",
    [
        np.nan,
        None,
        "",
        "  ",
        "nan",
        "NaN",
        "None",
        "NA",
        "n/a",
        "null",
        "Unassigned",
        "MULTIPLET",
        "doublet",
        "no_guide",
        "-",
    ],
)
def test_unassigned_cells_are_dropped(label):
    dataset = read(screen([*assigned(), label, label]), min_cells=1)
    assert dataset.adata.n_obs == 24
    assert dataset.conditions == ["A", "A+B", "B", "ctrl"]
    assert dataset.adata.uns["perturbflow"]["dropped_unassigned"] == 2


def test_one_warning_counts_the_dropped_cells_and_names_their_labels(caplog):
    labels = [*assigned(), "nan", "nan", "nan", np.nan, np.nan, ""]
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        read(screen(labels), min_cells=1)
    dropped = [m for m in warnings_of(caplog) if "no perturbation assigned" in m]
    assert dropped == [
        "<AnnData>: dropped 6 of 30 cells with no perturbation assigned in obs['condition']: "
        "'nan' (3), <missing> (2), '' (1) (unassigned= sets which labels mean this)"
    ]


def test_nothing_is_said_when_every_cell_is_assigned(caplog):
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        dataset = read(screen(assigned()), min_cells=1)
    assert not any("dropped" in m for m in warnings_of(caplog))
    assert dataset.adata.uns["perturbflow"]["dropped_unassigned"] == 0


def test_categorical_column_with_nan_category_and_real_nan():
    labels = [*assigned(), "nan", "nan", np.nan, "NaN"]
    adata = screen(labels, categorical=True)
    assert isinstance(adata.obs["condition"].dtype, pd.CategoricalDtype)
    assert adata.obs["condition"].isna().sum() == 1

    dataset = read(adata, min_cells=1)

    assert dataset.adata.n_obs == 24
    # Neither the parsed conditions nor the user's own column keep a trace of the labels.
    for name in ("nan", "NaN"):
        assert name not in dataset.conditions
        assert name not in set(dataset.condition_labels)
        assert name not in set(dataset.adata.obs["condition"].cat.categories)
        assert name not in dataset.perturbed_genes
        assert name not in dataset.unmeasured_genes
    assert not dataset.adata.obs["condition"].isna().any()


def test_a_combination_naming_an_unassigned_guide_is_dropped():
    dataset = read(screen([*assigned(), "A+nan", "none+B"]), min_cells=1)
    assert dataset.adata.n_obs == 24
    assert dataset.conditions == ["A", "A+B", "B", "ctrl"]


def test_keep_unassigned_refuses_and_names_column_labels_and_counts():
    labels = [*assigned(), "nan", "nan", np.nan]
    with pytest.raises(DataValidationError) as error:
        read(screen(labels), keep_unassigned=True)
    message = str(error.value)
    assert "obs['condition'] assigns no perturbation to 3 of 27 cells" in message
    assert "'nan' (2), <missing> (1)" in message
    assert "relabel them" in message
    assert "drop keep_unassigned=True" in message


def test_keep_unassigned_reads_a_fully_labelled_file():
    dataset = read(screen(assigned()), keep_unassigned=True, min_cells=1)
    assert dataset.adata.n_obs == 24


def test_extra_unassigned_labels_extend_the_default_set():
    labels = [*assigned(), "no-guide-detected", "nan"]
    dataset = read(
        screen(labels), unassigned=(*UNASSIGNED_LABELS, "No-Guide-Detected"), min_cells=1
    )
    assert dataset.adata.n_obs == 24


def test_an_empty_unassigned_set_keeps_text_labels_but_never_missing_values(caplog):
    labels = [*assigned(), "nan", np.nan]
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        dataset = read(screen(labels), unassigned=(), min_cells=1)
    assert dataset.conditions == ["A", "A+B", "B", "ctrl", "nan"]
    assert dataset.adata.n_obs == 25
    assert any("<missing> (1)" in m for m in warnings_of(caplog))


def test_an_explicit_control_label_is_never_unassigned():
    labels = ["None"] * 6 + assigned()[6:]
    dataset = read(screen(labels), control="none", min_cells=1)
    assert dataset.cells_per_condition["ctrl"] == 6
    assert dataset.adata.n_obs == 24


def test_read_options_carry_the_new_settings():
    labels = [*assigned(10), *["nan"] * 10]
    with pytest.raises(DataValidationError, match="assigns no perturbation"):
        ReadOptions(keep_unassigned=True).read(screen(labels))
    dataset = ReadOptions(unassigned=()).read(screen(labels))
    assert "nan" in dataset.conditions


# --- cells without counts ------------------------------------------------------------------------


@pytest.mark.parametrize("counts", [True, False], ids=["counts", "log"])
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_zero_count_cells_are_dropped_and_counted(caplog, counts, sparse):
    adata = screen(assigned(), counts=counts)
    adata.X[[3, 7]] = 0
    if sparse:
        adata.X = sp.csr_matrix(adata.X)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        dataset = read(adata, min_cells=1)
    assert "<AnnData>: dropped 2 of 24 cells with zero total counts in X (first: cell3, cell7)" in (
        warnings_of(caplog)
    )
    assert list(dataset.adata.obs_names) == [f"cell{i}" for i in range(24) if i not in (3, 7)]
    assert np.isfinite(dataset.expression(dataset.conditions)).all()
    assert dataset.adata.uns["perturbflow"]["dropped_zero_counts"] == 2


def test_zero_count_cells_are_counted_among_assigned_cells(caplog):
    adata = screen([*assigned(), "nan", "nan"])
    adata.X[[0, 24]] = 0  # one assigned control cell, one unassigned cell
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        dataset = read(adata, min_cells=1)
    messages = warnings_of(caplog)
    assert any("dropped 2 of 26 cells with no perturbation assigned" in m for m in messages)
    assert any("dropped 1 of 24 cells with zero total counts" in m for m in messages)
    assert dataset.adata.n_obs == 23


def test_a_file_with_no_usable_cell_is_refused():
    adata = screen(["ctrl", "nan", "A"])
    adata.X[[0, 2]] = 0
    with pytest.raises(
        DataValidationError, match="no cells left after dropping 1 unassigned and 2"
    ):
        read(adata)


def test_control_cells_that_are_all_empty_leave_no_control():
    adata = screen(assigned())
    adata.X[:6] = 0
    with pytest.raises(DataValidationError, match="no control cells"):
        read(adata, min_cells=1)


# --- normalising raw counts of few genes ---------------------------------------------------------


def few_genes_warnings(caplog) -> list[str]:
    return [m for m in warnings_of(caplog) if "size factors" in m]


def test_normalising_counts_of_few_genes_warns(caplog):
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        read(screen(assigned(), n_genes=28), min_cells=1)
    assert few_genes_warnings(caplog) == [
        "<AnnData>: X holds raw counts of only 28 genes; counts-per-10k size factors over fewer "
        "than 1000 genes are unreliable. If the file has its own log-normalised layer, read it "
        "with layer=<name> (it has no layers)"
    ]


def test_the_few_genes_warning_lists_the_files_layers(caplog):
    adata = screen(assigned(), n_genes=28)
    adata.layers["logcounts"] = np.log1p(adata.X)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        read(adata, min_cells=1)
    assert few_genes_warnings(caplog)[0].endswith("(available layers: logcounts)")


@pytest.mark.parametrize(
    ("n_genes", "counts"),
    [(MIN_GENES_FOR_NORMALISATION, True), (28, False)],
    ids=["1000-genes", "log-normalised"],
)
def test_no_few_genes_warning_for_many_genes_or_normalised_data(caplog, n_genes, counts):
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        read(screen(assigned(1), n_genes=n_genes, counts=counts), min_cells=1)
    assert few_genes_warnings(caplog) == []


# --- a stranger's screen, end to end -------------------------------------------------------------


def test_a_crop_seq_file_with_nan_guides_and_lowercase_targets(caplog):
    """28 measured genes, a third of the cells without a guide (``nan`` or blank), targets written
    in lower case and not measured: read ends with real conditions only, and says why."""
    targets = ["ctrl", "gata1", "tal1", "spi1"]
    labels = [label for label in targets for _ in range(8)] + ["nan"] * 12 + [""] * 4
    adata = screen(labels, n_genes=28, categorical=True)

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        dataset = read(adata, min_cells=8)

    assert dataset.conditions == ["ctrl", "gata1", "spi1", "tal1"]
    assert dataset.adata.n_obs == 32
    unassigned = {label.lower() for label in UNASSIGNED_LABELS} | {""}
    assert not unassigned & {c.lower() for c in dataset.conditions}
    assert not unassigned & {c.lower() for c in dataset.condition_labels.unique()}
    assert not unassigned & {g.lower() for g in dataset.perturbed_genes}
    assert dataset.unmeasured_genes == {"gata1", "spi1", "tal1"}
    assert list(dataset.adata.obs[CONDITION_COLUMN].cat.categories) == dataset.conditions
    messages = warnings_of(caplog)
    assert any("dropped 16 of 48 cells" in m and "'nan' (12), '' (4)" in m for m in messages)
    assert any("only 28 genes" in m for m in messages)
    assert any("not measured" in m and "gata1, spi1, tal1" in m for m in messages)
    assert not any("nan" in m for m in messages if "not measured" in m)
