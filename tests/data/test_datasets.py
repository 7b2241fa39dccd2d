"""The dataset registry: what is registered, where files are looked for, and how loading fails.

Real-data cases run only when the shared data folder is present; synthetic cases register a
temporary dataset over a small `.h5ad` written to `tmp_path`, and URL cases download from a
local HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from perturbflow.data import datasets
from perturbflow.data.datasets import (
    CACHE_DIR_ENV,
    DATA_DIR_ENV,
    DATASETS,
    DatasetSpec,
    DatasetUnavailableError,
    UnknownDatasetError,
    UnverifiedChecksumError,
    data_dir,
    dataset_spec,
    file_sha256,
    list_datasets,
    load_dataset,
)
from perturbflow.data.io import CONDITION_COLUMN, DataValidationError

LOCAL = ("norman19_subset", "mcfaline23_subset", "papalexi21_thp1")
REAL_DATA = data_dir()


def real_file(name: str) -> Path:
    """Path of a registered local dataset, skipping the test when the data folder lacks it."""
    spec = DATASETS[name]
    if REAL_DATA is None or not (REAL_DATA / str(spec.local_path)).is_file():
        pytest.skip(
            f"real data for {name!r} not found: set {DATA_DIR_ENV} to the shared data folder "
            f"holding {spec.local_path}"
        )
    return REAL_DATA / str(spec.local_path)


def toy_adata(seed: int = 0) -> ad.AnnData:
    """Two 'datasets' in one file, like devel.h5ad: conditions with all categories kept."""
    rng = np.random.default_rng(seed)
    labels = ["control"] * 20 + ["A"] * 15 + ["A+B"] * 15 + ["control"] * 12 + ["C"] * 12
    source = ["one"] * 50 + ["two"] * 24
    counts = rng.poisson(3.0, size=(len(labels), 4)).astype(np.float32) + 1  # (cells, genes)
    obs = pd.DataFrame(
        {
            "condition": pd.Categorical(labels),
            "dataset": pd.Categorical(source),
            "line": pd.Categorical(["x", "y"] * (len(labels) // 2)),
        },
        index=[f"cell{i}" for i in range(len(labels))],
    )
    return ad.AnnData(X=counts, obs=obs, var=pd.DataFrame(index=["A", "B", "C", "D"]))


def toy_spec(**changes) -> DatasetSpec:
    fields = {
        "name": "toy",
        "description": "synthetic",
        "citation": "none",
        "perturbation_type": "CRISPRa",
        "condition_key": "condition",
        "control": "control",
        "local_path": "toy/toy.h5ad",
    }
    return DatasetSpec(**{**fields, **changes})


@pytest.fixture
def toy_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    (folder / "toy").mkdir(parents=True)
    toy_adata().write_h5ad(folder / "toy" / "toy.h5ad")
    return folder


@pytest.fixture
def served(tmp_path: Path, http_server) -> tuple[str, Path]:
    """(base URL, folder) of a local static file server (the suite's ``http_server``)."""
    folder = tmp_path / "served"
    folder.mkdir()
    url, _ = http_server(directory=folder)
    return url, folder


# --- registry ---------------------------------------------------------------------------------


def test_registry_holds_the_local_and_public_datasets() -> None:
    assert set(LOCAL) <= set(DATASETS)
    assert {"norman19_scperturb", "replogle22_k562_essential", "norman19_gears"} <= set(DATASETS)
    for name, spec in DATASETS.items():
        assert spec.name == name
        assert (spec.local_path is None) != (spec.url is None), name
        assert spec.citation and spec.description and spec.perturbation_type
        if spec.url is not None:
            assert spec.url.startswith("https://"), name
            assert spec.verified == (spec.sha256 is not None)
        if spec.sha256 is not None:
            assert len(spec.sha256) == 64 and spec.size and spec.md5, name


def test_local_specs_have_the_documented_keys() -> None:
    norman = DATASETS["norman19_subset"]
    assert (norman.condition_key, norman.control, norman.default_split) == (
        "condition",
        "control",
        "combo",
    )
    assert norman.subset == (("dataset", "norman19"),)
    assert norman.local_path == "perturbench_devel/devel.h5ad"
    mcfaline = DATASETS["mcfaline23_subset"]
    assert mcfaline.cell_type_key == "cell_type"
    assert mcfaline.default_split == "cross_cell_line"
    assert mcfaline.perturbation_type == "CRISPRi"
    papalexi = DATASETS["papalexi21_thp1"]
    assert (papalexi.condition_key, papalexi.control) == ("perturbation", "non-targeting")
    assert (papalexi.perturbation_type, papalexi.default_split) == ("CRISPRko", "unseen_single")


def test_spec_must_be_local_or_url_not_both() -> None:
    with pytest.raises(ValueError, match="exactly one of local_path and url"):
        toy_spec(url="https://example.org/x.h5ad")
    with pytest.raises(ValueError, match="exactly one of local_path and url"):
        toy_spec(local_path=None)
    with pytest.raises(ValueError, match="default_split"):
        toy_spec(default_split="random")


def test_unknown_name_lists_registered_names() -> None:
    with pytest.raises(KeyError) as caught:
        load_dataset("norman2019")
    message = str(caught.value)
    assert isinstance(caught.value, UnknownDatasetError)
    assert "'norman2019'" in message
    for name in LOCAL:
        assert name in message
    with pytest.raises(UnknownDatasetError):
        dataset_spec("nope")


def test_list_datasets_reports_source_and_availability(toy_folder, tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(DATASETS, "toy", toy_spec())
    table = list_datasets(data_dir=toy_folder, cache_dir=tmp_path / "cache")
    assert list(table.columns[:5]) == [
        "name",
        "perturbation_type",
        "source",
        "available",
        "verified",
    ]
    assert "description" in table.columns
    rows = table.set_index("name")
    assert rows.loc["toy", "available"] and rows.loc["toy", "source"] == "local"
    assert not rows.loc["norman19_subset", "available"]  # not in the toy folder
    assert rows.loc["norman19_scperturb", "source"] == "url"
    assert not rows.loc["norman19_scperturb", "available"]
    assert not rows.loc["norman19_gears", "verified"]


# --- where the data folder is -------------------------------------------------------------------


def test_data_dir_resolution_order(tmp_path, monkeypatch) -> None:
    work = tmp_path / "project" / "work"
    work.mkdir(parents=True)
    shared = tmp_path / "project" / "shared" / "data"
    repo_shared = tmp_path / "elsewhere" / "shared" / "data"
    repo_shared.mkdir(parents=True)
    monkeypatch.setattr(datasets, "_REPO_ROOT", tmp_path / "elsewhere" / "repo")
    monkeypatch.chdir(work)
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)

    assert data_dir() == repo_shared.resolve()  # only the repository fallback exists
    shared.mkdir(parents=True)
    assert data_dir() == shared.resolve()  # ../shared/data next to the working directory wins
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "from_env"))
    assert data_dir() == (tmp_path / "from_env").resolve()  # env wins, even when missing
    assert data_dir(tmp_path / "explicit") == (tmp_path / "explicit").resolve()  # argument wins


def test_data_dir_is_none_without_any_folder(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(datasets, "_REPO_ROOT", tmp_path / "repo")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    assert data_dir() is None
    with pytest.raises(DatasetUnavailableError, match=DATA_DIR_ENV):
        load_dataset("norman19_subset")


def test_missing_local_file_names_the_path_and_the_variable(tmp_path) -> None:
    with pytest.raises(DatasetUnavailableError) as caught:
        load_dataset("papalexi21_thp1", data_dir=tmp_path)
    message = str(caught.value)
    expected = tmp_path.resolve() / "papalexi2021_sceptre_lowmoi/papalexi2021_lowmoi_example.h5ad"
    assert str(expected) in message
    assert DATA_DIR_ENV in message
    assert isinstance(caught.value, FileNotFoundError)


# --- synthetic local dataset ----------------------------------------------------------------------


def test_subset_filter_keeps_matching_rows_and_drops_unused_categories(
    toy_folder, monkeypatch, tmp_path
) -> None:
    monkeypatch.setitem(
        DATASETS, "toy", toy_spec(subset=(("dataset", "one"),), cell_type_key="line")
    )
    dataset = load_dataset("toy", data_dir=toy_folder)
    assert dataset.adata.n_obs == 50
    assert dataset.conditions == ["A", "A+B", "ctrl"]
    assert list(dataset.adata.obs["dataset"].cat.categories) == ["one"]
    assert list(dataset.adata.obs["condition"].cat.categories) == ["A", "A+B", "control"]
    assert dataset.normalization == "log1p_cp10k"
    assert dataset.cell_type_key == "line"
    assert "dataset == 'one'" in dataset.source

    record = dataset.adata.uns["perturbflow"]["dataset"]
    path = toy_folder / "toy" / "toy.h5ad"
    assert record == {
        "name": "toy",
        "path": str(path.resolve()),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "source": "local",
        "perturbation_type": "CRISPRa",
        "subset": {"dataset": "one"},
    }
    dataset.adata.write_h5ad(tmp_path / "roundtrip.h5ad")  # the record is h5ad-serialisable


def test_subset_on_missing_column_or_value_is_a_clear_error(toy_folder, monkeypatch) -> None:
    monkeypatch.setitem(DATASETS, "toy", toy_spec(subset=(("study", "one"),)))
    with pytest.raises(DataValidationError, match="no column 'study'.*dataset"):
        load_dataset("toy", data_dir=toy_folder)
    monkeypatch.setitem(DATASETS, "toy", toy_spec(subset=(("dataset", "three"),)))
    with pytest.raises(DataValidationError, match="'three'; values present: one, two"):
        load_dataset("toy", data_dir=toy_folder)


def test_data_dir_from_environment_is_used(toy_folder, monkeypatch) -> None:
    monkeypatch.setitem(DATASETS, "toy", toy_spec())
    monkeypatch.setenv(DATA_DIR_ENV, str(toy_folder))
    dataset = load_dataset("toy")
    assert dataset.adata.n_obs == 74
    assert dataset.adata.obs[CONDITION_COLUMN].nunique() == 4


# --- URL datasets ---------------------------------------------------------------------------------


def test_url_dataset_without_download_asks_for_download(tmp_path) -> None:
    with pytest.raises(DatasetUnavailableError) as caught:
        load_dataset("norman19_scperturb", cache_dir=tmp_path)
    message = str(caught.value)
    assert "download=True" in message and "--download" in message
    assert str(tmp_path.resolve() / "NormanWeissman2019_filtered.h5ad") in message
    assert not isinstance(caught.value, UnverifiedChecksumError)


def test_unverified_checksum_refuses_to_download(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(datasets, "download_file", _no_network)
    for download in (True, False):
        with pytest.raises(UnverifiedChecksumError, match="checksum is not registered yet"):
            load_dataset("norman19_gears", cache_dir=tmp_path, download=download)


def test_cache_dir_from_environment(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "env_cache"))
    with pytest.raises(DatasetUnavailableError, match="env_cache"):
        load_dataset("replogle22_k562_essential")


def test_url_dataset_downloads_verifies_and_reuses_the_cache(served, tmp_path, monkeypatch):
    base, folder = served
    toy_adata().write_h5ad(folder / "toy.h5ad")
    payload = (folder / "toy.h5ad").read_bytes()
    spec = toy_spec(
        local_path=None,
        url=f"{base}/toy.h5ad",
        sha256=hashlib.sha256(payload).hexdigest(),
        md5=hashlib.md5(payload).hexdigest(),
        size=len(payload),
        subset=(("dataset", "two"),),
    )
    monkeypatch.setitem(DATASETS, "toy", spec)
    cache = tmp_path / "cache"

    dataset = load_dataset("toy", cache_dir=cache, download=True)
    assert dataset.conditions == ["C", "ctrl"]
    record = dataset.adata.uns["perturbflow"]["dataset"]
    assert record["sha256"] == spec.sha256 and record["url"] == spec.url
    assert record["source"] == "url"

    (folder / "toy.h5ad").unlink()  # a second load must not need the server
    again = load_dataset("toy", cache_dir=cache)
    assert again.adata.n_obs == dataset.adata.n_obs


def test_zip_archive_member_is_extracted_once(served, tmp_path, monkeypatch) -> None:
    base, folder = served
    toy_adata().write_h5ad(tmp_path / "toy.h5ad")
    with zipfile.ZipFile(folder / "bundle.zip", "w") as bundle:
        bundle.write(tmp_path / "toy.h5ad", "toy/perturb_processed.h5ad")
    digest = file_sha256(folder / "bundle.zip")
    spec = toy_spec(
        local_path=None,
        url=f"{base}/api/bundle.zip",
        filename="bundle.zip",
        sha256=digest,
        archive_member="toy/perturb_processed.h5ad",
    )
    (folder / "api").mkdir()
    (folder / "bundle.zip").rename(folder / "api" / "bundle.zip")
    monkeypatch.setitem(DATASETS, "toy", spec)

    dataset = load_dataset("toy", cache_dir=tmp_path / "cache", download=True)
    assert dataset.adata.n_obs == 74
    extracted = tmp_path / "cache" / f"bundle-{digest[:12]}" / "toy" / "perturb_processed.h5ad"
    assert extracted.is_file()
    assert dataset.adata.uns["perturbflow"]["dataset"]["archive_member"] == spec.archive_member

    monkeypatch.setitem(DATASETS, "toy", toy_spec(**{**_url_fields(spec), "archive_member": "x"}))
    with pytest.raises(DataValidationError, match="no member 'x'"):
        load_dataset("toy", cache_dir=tmp_path / "cache")


def test_user_placed_unverified_file_is_used_with_a_warning(tmp_path, monkeypatch, caplog):
    cache = tmp_path / "cache"
    cache.mkdir()
    toy_adata().write_h5ad(cache / "toy.h5ad")
    spec = toy_spec(local_path=None, url="https://example.org/toy.h5ad")
    monkeypatch.setitem(DATASETS, "toy", spec)
    monkeypatch.setattr(datasets, "download_file", _no_network)
    with caplog.at_level("WARNING", logger="perturbflow.data.datasets"):
        dataset = load_dataset("toy", cache_dir=cache)
    assert "without checksum verification" in caplog.text
    assert dataset.adata.uns["perturbflow"]["dataset"]["sha256"] == file_sha256(cache / "toy.h5ad")


def _url_fields(spec: DatasetSpec) -> dict:
    return {
        "local_path": None,
        "url": spec.url,
        "filename": spec.filename,
        "sha256": spec.sha256,
    }


def _no_network(*args, **kwargs):
    raise AssertionError("no download may be attempted")


# --- real data (skipped without the shared data folder) -------------------------------------------


def test_norman19_subset_real_data() -> None:
    real_file("norman19_subset")
    dataset = load_dataset("norman19_subset", data_dir=REAL_DATA)
    conditions = dataset.conditions
    assert len(conditions) == 34
    assert sum("+" in c for c in conditions) == 15
    assert sum("+" not in c and c != "ctrl" for c in conditions) == 18
    assert dataset.n_genes == 500
    assert set(dataset.adata.obs["dataset"].cat.categories) == {"norman19"}
    record = dataset.adata.uns["perturbflow"]["dataset"]
    assert record["name"] == "norman19_subset"
    assert record["sha256"] == file_sha256(real_file("norman19_subset"))


def test_mcfaline23_subset_real_data() -> None:
    real_file("mcfaline23_subset")
    dataset = load_dataset("mcfaline23_subset", data_dir=REAL_DATA)
    assert len(dataset.conditions) == 10
    assert dataset.adata.obs["cell_type"].nunique() == 3
    assert dataset.cell_type_key == "cell_type"
    assert dataset.adata.uns["perturbflow"]["dataset"]["subset"] == {"dataset": "mcfaline23"}


def test_papalexi21_thp1_real_data() -> None:
    real_file("papalexi21_thp1")
    dataset = load_dataset("papalexi21_thp1", data_dir=REAL_DATA)
    assert dataset.normalization == "log1p_cp10k"
    # 26 targets were screened, but CD274's gRNAs are never a cell's top gRNA in this example
    # file, so the max-gRNA call leaves 25 targets + control.
    assert len(dataset.conditions) == 26
    assert "CD274" not in dataset.conditions
    assert dataset.adata.n_obs == 20_729
    assert len(dataset.adata.uns["perturbflow"]["dataset"]["sha256"]) == 64
