"""Prior knowledge wired into the models: embedding specs, relation graphs, unseen genes.

The priors are written by the tests: GO terms and STRING edges that follow the simulator's
planted programs, and an embedding table planted from the true single-gene deltas.
"""

from __future__ import annotations

import dataclasses
import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _configs import TINY_SCBIG

from perturbflow.data import read
from perturbflow.data.conditions import parse_condition
from perturbflow.data.splits import make_split
from perturbflow.eval.loop import resolve_models
from perturbflow.models import get_model, load_model
from perturbflow.models.base import make_config
from perturbflow.models.scbig import ScBIG, ScBIGConfig
from perturbflow.programs.priors import (
    MissingPriorError,
    PriorCoverageError,
    check_embedding_spec,
    prior_gene_table,
    relation_graph,
)


@pytest.fixture(scope="module")
def screen(simulated_screen):
    adata = simulated_screen("tiny", n_unmeasured=1)
    return adata, read(adata)


def _write_gz(path: Path, header: list[str], rows: list[list[object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("\n".join("\t".join(map(str, row)) for row in [header, *rows]) + "\n")


def _write_priors(root: Path, adata) -> Path:
    """GO terms and STRING edges per planted program (the unmeasured target gets its own)."""
    program = adata.var["program"]
    genes = [*adata.var_names, *adata.uns["synthetic"]["unmeasured_targets"]]
    term = {gene: f"GO:{int(program.get(gene, 99)):07d}" for gene in genes}
    _write_gz(
        root / "priors/go_orghs/gene_go_propagated.tsv.gz",
        ["gene_symbol", "go_id", "ontology"],
        [[gene, term[gene], "BP"] for gene in genes] + [[gene, "GO:ROOT", "BP"] for gene in genes],
    )
    edges = [
        [a, b, 900]
        for i, a in enumerate(adata.var_names)
        for b in adata.var_names[i + 1 :]
        if program[a] == program[b]
    ]
    _write_gz(
        root / "priors/string_v12/string_ppi_700_ntm.tsv.gz",
        ["gene1_symbol", "gene2_symbol", "combined_score"],
        edges,
    )
    return root


def _planted_table(adata, path: Path, noise: float = 0.0) -> Path:
    """Each perturbed gene's vector: its true single delta in a 4-d projection."""
    truth = adata.uns["synthetic"]["true_delta"]
    singles = [name for name in truth.index if len(parse_condition(name)) == 1]
    deltas = truth.loc[singles].to_numpy()  # (S, G)
    _, _, components = np.linalg.svd(deltas - deltas.mean(axis=0), full_matrices=False)
    vectors = deltas @ components[:4].T  # (S, 4)
    vectors += noise * np.random.default_rng(0).normal(size=vectors.shape)
    pd.DataFrame(vectors, index=singles).to_csv(path)
    return path


def _unseen_pearson(model, adata, split) -> float:
    truth = adata.uns["synthetic"]["true_delta"]
    unseen = [name for name, group in split.subgroups.items() if group == "unseen_single"]
    predicted = model.predict_delta(unseen)
    return float(
        np.mean([np.corrcoef(predicted.loc[name], truth.loc[name])[0, 1] for name in unseen])
    )


def test_embedding_specs_are_checked_at_config_time():
    for good in ("data", "go", "ppi", "go+ppi", "text", "table.csv", "dir/emb.tsv"):
        check_embedding_spec(good, "embedding")
    with pytest.raises(ValueError, match=r"gene_embedding must be .*'gox'"):
        ScBIGConfig(gene_embedding="gox")
    with pytest.raises(ValueError, match="relation_graph"):
        ScBIGConfig(relation_graph="hic")
    with pytest.raises(ValueError, match="embedding must be"):
        make_config("ridge", {"embedding": "go+nope"})


def test_variant_names_set_the_embedding_source():
    assert get_model("ridge[go]").config.embedding == "go"
    assert get_model("scbig[go+ppi]").config.gene_embedding == "go+ppi"
    assert make_config("nearest_neighbor[ppi]", {"alpha": 2.0}).embedding == "ppi"
    assert resolve_models("ridge,ridge[go]") == ["ridge", "ridge[go]"]
    with pytest.raises(KeyError, match="takes no \\[variant\\]"):
        get_model("additive[go]")
    with pytest.raises(KeyError, match="unknown model"):
        resolve_models("ridge[nope]")
    with pytest.raises(ValueError, match="sets embedding='go' but the options set"):
        make_config("ridge[go]", {"embedding": "ppi"})


def test_prior_table_covers_unmeasured_perturbed_genes(screen, tmp_path):
    adata, dataset = screen
    root = _write_priors(tmp_path, adata)
    table = prior_gene_table("go", dataset.genes, dataset.perturbed_genes, root)
    unmeasured = adata.uns["synthetic"]["unmeasured_targets"][0]
    assert unmeasured not in dataset.genes and unmeasured in table.index
    assert set(dataset.genes) <= set(table.index)
    program = adata.var["program"]
    same = [g for g in dataset.genes if program[g] == program.iloc[0]][:2]
    other = next(g for g in dataset.genes if program[g] != program.iloc[0])
    cosine = table.loc[[*same, other]].to_numpy()
    cosine = cosine / np.linalg.norm(cosine, axis=1, keepdims=True)
    assert cosine[0] @ cosine[1] > cosine[0] @ cosine[2] + 0.5


def test_missing_priors_and_no_overlap_are_clear_errors(screen, tmp_path):
    adata, dataset = screen
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingPriorError, match=r"go_orghs/gene_go_propagated\.tsv\.gz"):
        prior_gene_table("go", dataset.genes, dataset.perturbed_genes, tmp_path / "empty")
    table = tmp_path / "other.csv"
    pd.DataFrame(np.eye(3), index=["X1", "X2", "X3"]).to_csv(table)
    with pytest.raises(PriorCoverageError, match="X1"):
        prior_gene_table(str(table), dataset.genes, dataset.perturbed_genes)


def test_ppi_relation_graph_follows_string_edges(screen, tmp_path):
    adata, dataset = screen
    root = _write_priors(tmp_path, adata)
    adjacency = relation_graph("ppi", dataset.genes, root).toarray()
    program = adata.var["program"].to_numpy()
    same = program[:, None] == program[None, :]
    np.fill_diagonal(same, False)
    np.testing.assert_array_equal(adjacency > 0, same)


def test_scbig_with_go_and_string_predicts_an_unmeasured_unseen_gene(screen, tmp_path):
    adata, dataset = screen
    root = _write_priors(tmp_path, adata)
    split = make_split("simulation", dataset.conditions, seed=0)
    config = dataclasses.replace(
        TINY_SCBIG,
        gene_embedding="go",
        relation_graph="ppi",
        priors=str(root),
        missing_gene="error",
        flow_steps=2,
        ae_epochs=1,
    )
    model = ScBIG(config).fit(dataset, split)
    unmeasured = adata.uns["synthetic"]["unmeasured_targets"][0]
    cells = model.predict([unmeasured], n_cells=5)
    assert cells.n_obs == 5 and np.isfinite(cells.X).all()
    # GRC on STRING: every program's genes are mostly one planted program.
    labels = model.programs_.set_index("gene").loc[dataset.genes, "program"].to_numpy()
    planted = adata.var["program"].to_numpy()
    purity = np.mean(
        [np.bincount(planted[labels == k]).max() / (labels == k).sum() for k in set(labels)]
    )
    assert purity > 0.8
    loaded = load_model(model.save(tmp_path / "go.npz"))
    np.testing.assert_allclose(
        loaded.predict([unmeasured], n_cells=5, seed=1).X,
        model.predict([unmeasured], n_cells=5, seed=1).X,
        atol=1e-5,
    )


def test_planted_embedding_beats_the_data_embedding_on_unseen_genes(screen, tmp_path):
    adata, dataset = screen
    table = str(_planted_table(adata, tmp_path / "planted.csv"))
    split = make_split("simulation", dataset.conditions, seed=0)
    ridge_data = get_model("ridge").fit(dataset, split)
    ridge_planted = get_model(f"ridge[{table}]").fit(dataset, split)
    assert (
        _unseen_pearson(ridge_planted, adata, split)
        > _unseen_pearson(ridge_data, adata, split) + 0.2
    )
    # The unseen genes' means come from the start (the ridge on the embedding): a short flow
    # gives the same correlations as a long one. Propagation through the training cells' gene
    # covariance is off in both fits, so the difference is the embedding's alone.
    fast = dataclasses.replace(TINY_SCBIG, flow_steps=2, ae_epochs=1, propagate_prior=False)
    scbig_data = ScBIG(fast).fit(dataset, split)
    scbig_planted = ScBIG(dataclasses.replace(fast, gene_embedding=table)).fit(dataset, split)
    assert scbig_planted.start_.additive.config.unseen_mode == "ridge"
    assert (
        _unseen_pearson(scbig_planted, adata, split)
        > _unseen_pearson(scbig_data, adata, split) + 0.2
    )


def test_registered_sources_have_unit_rows_and_user_tables_keep_their_scale(screen, tmp_path):
    adata, dataset = screen
    root = _write_priors(tmp_path, adata)
    for source in ("go", "ppi"):
        table = prior_gene_table(source, dataset.genes, dataset.perturbed_genes, root)
        np.testing.assert_allclose(np.linalg.norm(table.to_numpy(), axis=1), 1.0, atol=1e-5)
    genes = list(dataset.genes[:6])
    path = tmp_path / "scaled.csv"
    vectors = np.random.default_rng(0).normal(size=(6, 3)) * np.array([[1e-3], [1], [100]] * 2)
    pd.DataFrame(vectors, index=genes).to_csv(path)
    table = prior_gene_table(str(path), dataset.genes, dataset.perturbed_genes)
    np.testing.assert_allclose(table.loc[genes].to_numpy(), vectors, rtol=1e-5)


def test_pathway_alignment_uses_the_chosen_gene_sets(screen, tmp_path, monkeypatch):
    adata, dataset = screen
    program = adata.var["program"]
    gmt = tmp_path / "sets.gmt"
    gmt.write_text(
        "".join(
            f"SET{k}\tplanted\t" + "\t".join(program.index[program == k]) + "\n"
            for k in sorted(program.unique())
        )
    )
    seen = {}
    original = ScBIG._pathway_membership

    def spy(self):
        seen["membership"] = original(self)
        return seen["membership"]

    monkeypatch.setattr(ScBIG, "_pathway_membership", spy)
    split = make_split("simulation", dataset.conditions, seed=0)
    config = dataclasses.replace(TINY_SCBIG, pathway_gene_sets=str(gmt), flow_steps=2, ae_epochs=1)
    ScBIG(config).fit(dataset, split)
    membership = seen["membership"].numpy()  # (P, G)
    assert membership.shape == (program.nunique(), dataset.n_genes)
    np.testing.assert_array_equal(membership.argmax(axis=0), program.to_numpy())
    missing = dataclasses.replace(config, pathway_gene_sets="reactome", priors=str(tmp_path))
    with pytest.raises(MissingPriorError, match="reactome"):
        ScBIG(missing).fit(dataset, split)
