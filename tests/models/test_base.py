"""The model registry, condition canonicalisation, prediction AnnData and checkpoint files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from perturbflow.data import CONDITION_COLUMN
from perturbflow.models import MODELS, Model, get_model, load_model, register_model
from perturbflow.models.base import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    canonical_conditions,
    make_config,
    predictions_to_anndata,
    read_checkpoint,
    write_checkpoint,
)
from perturbflow.models.baselines import EmbeddingConfig, LinearConfig, MeanShiftConfig

BASELINES = (
    "additive",
    "calibrated_additive",
    "combinator",
    "control_mean",
    "linear",
    "nearest_neighbor",
    "ridge",
)

# --- registry ----------------------------------------------------------------------------------


def test_every_baseline_is_registered_under_its_name() -> None:
    assert set(BASELINES) <= set(MODELS)
    for name in BASELINES:
        model = get_model(name)
        assert model.name == name
        assert isinstance(model, MODELS[name])
        assert isinstance(model, Model)


def test_unknown_model_error_lists_the_registered_models() -> None:
    with pytest.raises(KeyError, match="nope") as error:
        get_model("nope")
    for name in MODELS:
        assert name in str(error.value)


def test_registering_a_taken_name_fails_and_keeps_the_original() -> None:
    original = MODELS["additive"]
    with pytest.raises(ValueError, match="additive"):
        register_model("additive")(type("Impostor", (), {}))
    assert MODELS["additive"] is original


def test_register_model_adds_and_names_the_class() -> None:
    try:
        cls = register_model("_test_dummy")(type("Dummy", (), {"__init__": lambda s, c: None}))
        assert MODELS["_test_dummy"] is cls
        assert cls.name == "_test_dummy"
        assert isinstance(get_model("_test_dummy"), cls)
    finally:
        MODELS.pop("_test_dummy", None)


def test_a_config_of_the_wrong_type_is_refused() -> None:
    with pytest.raises(TypeError, match="LinearConfig"):
        get_model("linear", config=object())


def test_make_config_builds_the_model_config_from_a_dict() -> None:
    assert make_config("linear", {"n_components": 3}) == LinearConfig(n_components=3)
    assert make_config("additive") == MeanShiftConfig()
    assert make_config("ridge", {"alpha": 2.0}) == EmbeddingConfig(alpha=2.0)


def test_make_config_lists_the_valid_options() -> None:
    with pytest.raises(ValueError, match="n_components") as error:
        make_config("linear", {"n_component": 3})
    assert "n_component'" in str(error.value) and "ridge" in str(error.value)
    with pytest.raises(ValueError, match="missing"):
        make_config("ridge", {"missing": "ignore"})
    with pytest.raises(KeyError, match="nope"):
        make_config("nope", {})


# --- helpers -----------------------------------------------------------------------------------


def test_canonical_conditions_sorts_genes_and_drops_duplicates() -> None:
    labels = ["B+A", "ctrl", "A+B", "C", "A+ctrl", "C"]
    assert canonical_conditions(labels) == ["A+B", "ctrl", "C", "A"]
    assert canonical_conditions("B+A") == ["A+B"]
    assert canonical_conditions([]) == []


def test_predictions_to_anndata_stacks_blocks_in_order() -> None:
    blocks = {"A": np.zeros((2, 3)), "A+B": np.ones((3, 3))}
    adata = predictions_to_anndata(blocks, ["g1", "g2", "g3"], {"model": "x"})
    assert adata.shape == (5, 3)
    assert adata.X.dtype == np.float32
    assert list(adata.var_names) == ["g1", "g2", "g3"]
    assert list(adata.obs[CONDITION_COLUMN]) == ["A", "A", "A+B", "A+B", "A+B"]
    assert list(adata.obs[CONDITION_COLUMN].cat.categories) == ["A", "A+B"]
    np.testing.assert_array_equal(adata.X[2:], 1.0)
    assert adata.obs_names.is_unique
    assert adata.uns["perturbflow"] == {"model": "x"}


def test_predictions_to_anndata_with_no_conditions_is_empty() -> None:
    adata = predictions_to_anndata({}, ["g1", "g2"], {})
    assert adata.shape == (0, 2)


# --- checkpoints -------------------------------------------------------------------------------


def write_example(path, **kwargs):
    arrays = {"weights": np.arange(6.0).reshape(2, 3), "genes": np.array(["a", "b"])}
    return write_checkpoint(
        path, model="additive", config={"seed": 1}, meta={"n": 2}, arrays=arrays, **kwargs
    )


def test_checkpoint_round_trip(tmp_path) -> None:
    path = write_example(tmp_path / "sub" / "model.npz")
    header, arrays = read_checkpoint(path)
    assert header == {
        "format": CHECKPOINT_FORMAT,
        "model": "additive",
        "config": {"seed": 1},
        "meta": {"n": 2},
    }
    np.testing.assert_array_equal(arrays["weights"], np.arange(6.0).reshape(2, 3))
    assert list(arrays["genes"]) == ["a", "b"]
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.npz"], "temp file left"


def test_checkpoint_is_not_overwritten_by_default(tmp_path) -> None:
    path = tmp_path / "model.npz"
    path.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_example(path)
    assert path.read_bytes() == b"precious"
    write_example(path, overwrite=True)
    assert read_checkpoint(path)[0]["model"] == "additive"


def test_missing_checkpoint_names_the_path(tmp_path) -> None:
    path = tmp_path / "absent.npz"
    with pytest.raises(FileNotFoundError, match="absent.npz"):
        read_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="absent.npz"):
        load_model(path)


def _npz(path, **arrays) -> None:
    with open(path, "wb") as stream:
        np.savez(stream, **arrays)


def _npy(path, array) -> None:
    with open(path, "wb") as stream:
        np.save(stream, array)


def _header(value) -> np.ndarray:
    return np.frombuffer(json.dumps(value).encode(), dtype=np.uint8)


NOT_CHECKPOINTS = {
    "empty": lambda path: path.write_bytes(b""),
    "text": lambda path: path.write_text("gene,value\nA,1\n"),
    "corrupt_zip": lambda path: path.write_bytes(b"PK\x03\x04 truncated archive"),
    "npy": lambda path: _npy(path, np.arange(3)),
    "no_header": lambda path: _npz(path, weights=np.arange(3)),
    "bad_json": lambda path: _npz(path, header=np.frombuffer(b"{not json", dtype=np.uint8)),
    "list_header": lambda path: _npz(path, header=_header([1, 2])),
    "wrong_format": lambda path: _npz(path, header=_header({"format": "other", "model": "x"})),
}


@pytest.mark.parametrize("kind", sorted(NOT_CHECKPOINTS))
def test_not_a_checkpoint_raises_checkpoint_error_naming_the_path(kind: str, tmp_path) -> None:
    path = tmp_path / f"{kind}.npz"
    NOT_CHECKPOINTS[kind](path)
    with pytest.raises(CheckpointError, match=f"{kind}.npz"):
        read_checkpoint(path)
    with pytest.raises(CheckpointError, match=f"{kind}.npz"):
        load_model(path)


def test_checkpoint_of_an_unregistered_model_is_refused(tmp_path) -> None:
    path = write_checkpoint(
        tmp_path / "alien.npz", model="alien_model", config={}, meta={}, arrays={}
    )
    with pytest.raises(CheckpointError, match="alien_model"):
        load_model(path)


def test_gene_names_match_by_letter_case_then_by_alias_and_only_when_unambiguous(caplog):
    from perturbflow.models.base import match_gene_names

    aliases = {"P53": {"TP53"}, "MLL": {"KMT2A"}, "SHARED": {"TP53", "KMT2A"}}

    def resolver():
        return lambda symbol: aliases.get(symbol.upper(), {symbol.upper()})

    vocabulary = {"TP53", "KMT2A", "GAPDH"}
    reported: set[str] = set()
    with caplog.at_level("INFO"):
        names = match_gene_names(
            ["gapdh", "p53+MLL", "SHARED", "NOVEL"],
            vocabulary,
            owner="m",
            reported=reported,
            aliases=resolver,
        )
    assert names == ["GAPDH", "KMT2A+TP53", "SHARED", "NOVEL"]
    assert "'p53' matched to 'TP53' (alias in the gene info)" in caplog.text
    assert "'gapdh' matched to 'GAPDH' (letter case)" in caplog.text
    calls = []
    match_gene_names(
        ["TP53"], vocabulary, owner="m", reported=set(), aliases=lambda: calls.append(1)
    )
    assert calls == []  # known genes never load the alias table


def test_real_gene_info_resolves_a_previous_symbol():
    from perturbflow.data.datasets import data_dir
    from perturbflow.models.base import default_alias_resolver, match_gene_names

    if data_dir() is None or not (data_dir() / "priors" / "go_orghs" / "gene_info.tsv.gz").exists():
        pytest.skip("real gene info absent (set PERTURBFLOW_DATA_DIR)")
    assert default_alias_resolver() is not None
    names = match_gene_names(["MLL"], {"KMT2A", "TP53"}, owner="m", reported=set())
    assert names == ["KMT2A"]


def test_stacked_predictions_become_x_without_a_copy_and_refuse_a_bad_shape():
    from perturbflow.models.base import stacked_predictions_to_anndata

    matrix = np.arange(12, dtype=np.float32).reshape(6, 2)
    adata = stacked_predictions_to_anndata(matrix, ["A", "B+C"], [4, 2], ["g1", "g2"], {})
    assert adata.X is matrix or np.shares_memory(adata.X, matrix)
    assert adata.obs.iloc[:, 0].astype(str).tolist() == ["A"] * 4 + ["B+C"] * 2
    with pytest.raises(ValueError, match="sum\\(sizes\\)"):
        stacked_predictions_to_anndata(matrix, ["A"], [5], ["g1", "g2"], {})
    with pytest.raises(ValueError, match="float32"):
        stacked_predictions_to_anndata(matrix.astype(float), ["A"], [6], ["g1", "g2"], {})
