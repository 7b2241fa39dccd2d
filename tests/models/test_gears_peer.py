"""The GEARS peer: GO-table handling always; a tiny offline fit when cell-gears is installed.

The synthetic genes (``G0001``, ``U000``) are not in any real GO table, so the fit uses a made-up
GO table written to ``tmp_path`` through ``GearsConfig.go_table``.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import pandas as pd
import pytest
from _asserts import assert_stored_cells_plus_one_offset

from perturbflow.data import CONDITION_COLUMN
from perturbflow.data.conditions import genes_of
from perturbflow.data.splits import Split
from perturbflow.models import MODELS, get_model, load_model
from perturbflow.models.base import ModelNotFittedError
from perturbflow.models.peers import (
    GearsConfig,
    GearsModel,
    GoTableNotFoundError,
    PeerNotInstalledError,
    UnknownPerturbationError,
    register_peers,
)
from perturbflow.models.peers import gears as gears_peer

needs_gears = pytest.mark.skipif(
    not gears_peer.gears_available(),
    reason="cell-gears / torch_geometric not installed (pip install 'perturbflow[peers]')",
)

TINY = dict(hidden_size=8, epochs=1, batch_size=16, decoder_hidden_size=4, max_control_cells=40)


# -- GO annotations (no cell-gears needed) ------------------------------------------------------


def test_gene2go_drops_no_data_evidence():
    table = pd.DataFrame(
        {
            "gene_symbol": ["A", "A", "A", "B", "C"],
            "entrez_id": ["1", "1", "1", "2", "3"],
            "go_id": ["GO:1", "GO:2", "GO:0008150", "GO:2", "GO:0008150"],
            "ontology": ["BP", "CC", "BP", "CC", "BP"],
            "evidence": ["IDA", "IEA", "ND", "TAS", "ND"],
        }
    )
    gene2go = gears_peer.gene2go_from_table(table)
    assert gene2go == {"A": {"GO:1", "GO:2"}, "B": {"GO:2"}}  # C had only ND: gone


def test_read_gene2go_reads_gzipped_tsv(tmp_path):
    path = tmp_path / "gene_go.tsv.gz"
    pd.DataFrame(
        {"gene_symbol": ["A", "A"], "go_id": ["GO:1", "GO:9"], "evidence": ["IDA", "ND"]}
    ).to_csv(path, sep="\t", index=False)
    assert gears_peer.read_gene2go(path) == {"A": {"GO:1"}}


def test_gene2go_names_missing_columns():
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['go_id'\]"):
        gears_peer.gene2go_from_table(pd.DataFrame({"gene_symbol": ["A"], "term": ["GO:1"]}))


def test_missing_go_table_says_how_to_point_to_one(tmp_path, monkeypatch):
    monkeypatch.setenv("PERTURBFLOW_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(GoTableNotFoundError, match="GearsConfig\\(go_table=...\\)"):
        gears_peer.default_go_table()
    with pytest.raises(GoTableNotFoundError, match="not found"):
        gears_peer.read_gene2go(tmp_path / "absent.tsv")


def test_go_similarity_is_jaccard_above_threshold():
    gene2go = {"a": {"t1", "t2"}, "b": {"t2", "t3"}, "c": {"t4"}, "d": {"t1", "t2", "t3", "t5"}}
    edges = gears_peer.go_similarity_edges(gene2go, ["a", "b", "c", "d"], threshold=0.3)
    got = {(s, t): w for s, t, w in edges.itertuples(index=False)}
    assert got == {
        ("a", "a"): 1.0,
        ("a", "b"): pytest.approx(1 / 3),
        ("a", "d"): 0.5,
        ("b", "a"): pytest.approx(1 / 3),
        ("b", "b"): 1.0,
        ("b", "d"): 0.5,
        ("c", "c"): 1.0,
        ("d", "a"): 0.5,
        ("d", "b"): 0.5,
        ("d", "d"): 1.0,
    }
    assert list(edges["source"]) == sorted(edges["source"])  # GEARS's row order


@pytest.mark.parametrize(("name", "spelling"), [("ctrl", "ctrl"), ("B", "B+ctrl"), ("B+A", "A+B")])
def test_gears_spelling(name, spelling):
    assert gears_peer.gears_condition(name) == spelling


# -- registry without cell-gears ----------------------------------------------------------------


def test_not_registered_without_the_package(monkeypatch):
    monkeypatch.setattr(gears_peer, "gears_available", lambda: False)
    monkeypatch.delitem(MODELS, "gears", raising=False)
    assert register_peers() == ()
    assert "gears" not in MODELS
    with pytest.raises(KeyError, match="unknown model 'gears'"):
        get_model("gears")


def test_constructing_without_the_package_says_what_to_install(monkeypatch):
    monkeypatch.setattr(gears_peer, "gears_available", lambda: False)
    with pytest.raises(PeerNotInstalledError, match=r"pip install 'perturbflow\[peers\]'"):
        GearsModel()
    with pytest.raises(PeerNotInstalledError, match=r"pip install 'perturbflow\[peers\]'"):
        gears_peer.import_gears()


def test_config_paths_are_stored_as_text(tmp_path):
    assert GearsConfig(go_table=tmp_path / "go.tsv").go_table == str(tmp_path / "go.tsv")
    with pytest.raises(ValueError, match="epochs"):
        GearsConfig(epochs=0)


# -- with cell-gears ----------------------------------------------------------------------------


@needs_gears
def test_registered_when_installed():
    assert "gears" in register_peers()
    assert MODELS["gears"] is GearsModel


@needs_gears
def test_go_similarity_matches_gears_own_edges():
    gears_peer.import_gears()  # first: undoes what importing cell-gears changes globally
    from gears.utils import get_GO_edge_list

    rng = np.random.default_rng(0)
    gene2go = {f"g{i}": {f"t{t}" for t in rng.choice(12, 3, replace=False)} for i in range(15)}
    expected = [edge for gene in gene2go for edge in get_GO_edge_list((gene, gene2go))]
    edges = gears_peer.go_similarity_edges(gene2go, list(gene2go))
    assert list(edges.itertuples(index=False, name=None)) == expected


def _synthetic_go_table(path, genes, seed=0):
    """Made-up GO terms: 3 of 12 terms per gene, plus an ND row that must be ignored."""
    rng = np.random.default_rng(seed)
    rows = [
        (gene, f"GO:{term:07d}", "IDA")
        for gene in genes
        for term in rng.choice(12, 3, replace=False)
    ]
    rows.append((genes[0], "GO:0008150", "ND"))
    table = pd.DataFrame(rows, columns=["gene_symbol", "go_id", "evidence"])
    table.to_csv(path, sep="\t", index=False)
    return path


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory, screen_data):
    dataset, split = screen_data(
        "tiny",
        split="combo",
        n_genes=30,
        n_programs=3,
        n_perturbed=6,
        n_unmeasured=1,
        n_doubles=5,
        n_control_cells=60,
        n_cells_per_condition=16,
    )
    genes = sorted(set(dataset.genes) | genes_of(dataset.perturbations))
    go_table = _synthetic_go_table(tmp_path_factory.mktemp("go") / "gene_go.tsv", genes)
    return dataset, split, go_table


@pytest.fixture(scope="module")
def fitted(synthetic, tmp_path_factory):
    dataset, split, go_table = synthetic
    workdir = tmp_path_factory.mktemp("cwd")
    previous = os.getcwd()
    os.chdir(workdir)
    try:
        model = GearsModel(GearsConfig(go_table=str(go_table), **TINY)).fit(dataset, split)
        assert os.getcwd() == str(workdir)
    finally:
        os.chdir(previous)
    assert list(workdir.iterdir()) == [], "GEARS left files in the working directory"
    return model


@needs_gears
def test_fit_predicts_test_conditions(synthetic, fitted):
    dataset, split, _ = synthetic
    test = list(split.test)
    deltas = fitted.predict_delta(test)
    assert deltas.shape == (len(test), dataset.n_genes)
    assert list(deltas.index) == test
    assert list(deltas.columns) == list(dataset.genes)
    assert np.isfinite(deltas.to_numpy()).all()
    assert np.abs(deltas.to_numpy()).max() > 0

    cells = fitted.predict(test, n_cells=5, seed=1)
    assert cells.shape == (5 * len(test), dataset.n_genes)
    assert list(cells.obs[CONDITION_COLUMN].cat.categories) == test
    assert np.isfinite(cells.X).all()
    assert cells.uns["perturbflow"]["model"] == "gears"
    # each predicted cell is a stored control cell, recentred on the control mean, shifted by
    # the condition's delta
    first = np.asarray(cells[cells.obs[CONDITION_COLUMN] == test[0]].X)
    unshifted = first - deltas.loc[test[0]].to_numpy(dtype=np.float32)  # (5, G)
    np.testing.assert_allclose(unshifted.mean(axis=0), fitted.control_mean_, atol=1e-4)
    assert_stored_cells_plus_one_offset(unshifted, fitted.control_cells_)


@needs_gears
@pytest.mark.filterwarnings("ignore:The use of `x.T`:UserWarning")
def test_delta_is_gears_predict_mean_shift(fitted):
    """The delta equals GEARS's own prediction (mean of 300 control cells) minus their mean.

    GEARS draws the 300 cells at random; the shift does not depend on which cells are drawn.
    """
    import anndata as ad
    import scipy.sparse as sp
    import torch
    from gears.utils import create_cell_graph_dataset_for_prediction
    from torch_geometric.data import Batch

    genes = list(fitted.perturbable_genes_[:2])
    controls = ad.AnnData(sp.csr_matrix(fitted.control_cells_))
    graphs = create_cell_graph_dataset_for_prediction(
        genes, controls, list(fitted.perturbable_genes_), "cpu"
    )
    batch = Batch.from_data_list(graphs)
    with torch.no_grad():
        predicted = fitted.network_(batch).numpy()  # (300, G)
    cells = batch.x.numpy().reshape(len(graphs), -1)  # (300, G)
    shifts = predicted - cells
    # the shift does not depend on the cell; only the batch's first cell differs (GEARS quirk)
    np.testing.assert_allclose(shifts[1:], np.broadcast_to(shifts[1], shifts[1:].shape), atol=1e-5)
    expected = predicted.mean(axis=0) - cells.mean(axis=0)
    delta = fitted.predict_delta(["+".join(genes)]).iloc[0].to_numpy()
    # float32 networks on batches of 300 and of 2 graphs round differently (1.1e-5 apart on one
    # BLAS thread); the deltas themselves are of order 0.1-1.
    np.testing.assert_allclose(delta, expected, atol=5e-5)
    assert np.abs(expected).max() > 0.1


@needs_gears
def test_unpredictable_conditions_raise(fitted):
    with pytest.raises(UnknownPerturbationError, match="NOTAGENE"):
        fitted.predict_delta(["NOTAGENE"])
    three = "+".join(fitted.perturbable_genes_[:3])
    with pytest.raises(ValueError, match="one or two genes"):
        fitted.predict_delta([three])
    assert (fitted.predict_delta(["ctrl"]).to_numpy() == 0).all()


@needs_gears
def test_save_load_predicts_the_same(fitted, synthetic, tmp_path):
    _, split, _ = synthetic
    path = fitted.save(tmp_path / "gears.npz")
    loaded = load_model(path)
    assert isinstance(loaded, GearsModel)
    assert loaded.perturbable_genes_ == fitted.perturbable_genes_
    pd.testing.assert_frame_equal(
        loaded.predict_delta(split.test), fitted.predict_delta(split.test), check_exact=False
    )
    with pytest.raises(FileExistsError):
        fitted.save(path)


@needs_gears
def test_unfitted_model_refuses_to_predict():
    with pytest.raises(ModelNotFittedError):
        GearsModel().predict_delta(["A"])


@needs_gears
def test_empty_validation_falls_back_to_training(synthetic, caplog):
    dataset, split, go_table = synthetic
    no_val = Split(
        kind="custom",
        seed=0,
        train=split.train + split.val,
        val=(),
        test=split.test,
        subgroups={name: split.subgroups[name] for name in split.test},
    )
    config = GearsConfig(go_table=str(go_table), **TINY)
    with caplog.at_level(logging.WARNING, logger=gears_peer.__name__):
        model = get_model("gears", config).fit(dataset, no_val)
    assert "validates on the" in caplog.text
    assert np.isfinite(model.predict_delta(split.test).to_numpy()).all()


# -- conditions GEARS cannot predict are refused before training (no cell-gears needed) ---------


def _without_go(go_table, gene, tmp_path):
    """A copy of ``go_table`` in which ``gene`` has no annotation."""
    table = pd.read_csv(go_table, sep="\t")
    path = tmp_path / "gene_go_without.tsv"
    table[table["gene_symbol"] != gene].to_csv(path, sep="\t", index=False)
    return path


def test_a_test_condition_outside_the_go_graph_is_refused_before_training(synthetic, tmp_path):
    dataset, split, go_table = synthetic
    target = next(name for name in split.test if name != "ctrl")
    gene = sorted(genes_of([target]))[0]
    trimmed = _without_go(go_table, gene, tmp_path)
    train = [name for name in split.train if gene not in genes_of([name])]
    # Without the test conditions to check, the same call selects training conditions.
    _, usable, _ = gears_peer.gears_conditions(dataset, train, list(split.val), str(trimmed))
    assert usable
    with pytest.raises(UnknownPerturbationError, match=f"{gene}.*before training"):
        gears_peer.gears_conditions(
            dataset, train, list(split.val), str(trimmed), predict=list(split.test)
        )


def test_the_environment_path_refuses_before_running_the_adapter(synthetic, tmp_path, monkeypatch):
    from perturbflow.models.peers import external
    from perturbflow.models.peers.gears_env import GearsEnvModel

    dataset, split, go_table = synthetic
    target = next(name for name in split.test if name != "ctrl")
    gene = sorted(genes_of([target]))[0]
    trimmed = _without_go(go_table, gene, tmp_path)
    monkeypatch.setattr(external, "require_env", lambda peer: None)

    def adapter_must_not_run(*args, **kwargs):
        raise AssertionError("the adapter ran although a test condition cannot be predicted")

    monkeypatch.setattr(external, "run_adapter", adapter_must_not_run)
    model = GearsEnvModel(GearsConfig(go_table=str(trimmed), **TINY))
    with pytest.raises(UnknownPerturbationError, match=gene):
        model.fit(dataset, split)
