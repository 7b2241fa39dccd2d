"""Network completion: planted communities are recovered, the split never leaks, runs repeat.

The planted network: genes fall into latent groups, regulators regulate mostly genes of their own
group, and the features are a noisy one-hot of the group (plus pure-noise columns). Features
predict edges there, and shuffling them across genes must cost accuracy.
"""

from __future__ import annotations

import dataclasses
import gzip
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from perturbflow.data import read
from perturbflow.data.datasets import data_dir
from perturbflow.grn import completion
from perturbflow.grn.completion import (
    CompletionConfig,
    CompletionInputError,
    FeatureConfig,
    _correlations,
    complete_network,
    decoder_jacobian,
    gene_features,
    message_passing_graph,
    split_edges,
)
from perturbflow.models.scbig.modules import PCAAutoencoder

FAST = CompletionConfig(hidden_dim=32, n_heads=4, n_layers=2, epochs=100, seed=0)
TINY_ENCODER = FeatureConfig(
    n_components=8,
    latent_dim=6,
    n_programs=4,
    knn=4,
    chunk_size=8,
    token_dim=16,
    n_heads=2,
    epochs=2,
    batch_size=256,
    probe_cells=64,
)


def planted(
    n_genes: int = 120,
    n_groups: int = 4,
    n_regulators: int = 24,
    p_within: float = 0.35,
    p_across: float = 0.01,
    noise: float = 0.3,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A network whose edges mostly stay within latent groups, and group-revealing features."""
    rng = np.random.default_rng(seed)
    genes = [f"G{i:03d}" for i in range(n_genes)]
    group = rng.integers(n_groups, size=n_genes)  # (G,)
    rows = []
    for regulator in rng.choice(n_genes, n_regulators, replace=False):
        hit = rng.random(n_genes) < np.where(group == group[regulator], p_within, p_across)
        hit[regulator] = False
        rows += [(genes[regulator], genes[target], 1) for target in np.flatnonzero(hit)]
    network = pd.DataFrame(rows, columns=["source", "target", "sign"])
    signal = np.eye(n_groups)[group] + noise * rng.normal(size=(n_genes, n_groups))  # (G, K)
    features = np.hstack([signal, rng.normal(size=(n_genes, 4))])  # (G, K + 4)
    return network, pd.DataFrame(features, index=genes)


@pytest.fixture(scope="module")
def planted_run():
    network, features = planted()
    return network, features, complete_network(network, features, FAST)


def _pairs(table: pd.DataFrame) -> set[tuple[str, str]]:
    return set(zip(table["source"], table["target"], strict=True))


# --- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize("held_out", [0.0, 1.0, -0.2, 1.5])
def test_held_out_must_be_a_share_strictly_between_0_and_1(held_out):
    with pytest.raises(ValueError, match=r"held_out must be in \(0, 1\)"):
        CompletionConfig(held_out=held_out)


def test_config_rejects_inconsistent_settings():
    with pytest.raises(ValueError, match="multiple of n_heads"):
        CompletionConfig(hidden_dim=30, n_heads=4)
    with pytest.raises(ValueError, match="decoder must be one of"):
        CompletionConfig(decoder="cosine")
    with pytest.raises(ValueError, match="masked_share"):
        CompletionConfig(masked_share=1.0)
    with pytest.raises(ValueError, match="negatives_per_positive must be at least 1"):
        CompletionConfig(negatives_per_positive=0)
    with pytest.raises(ValueError, match="token_dim"):
        FeatureConfig(token_dim=15, n_heads=2)


# --- accuracy -------------------------------------------------------------------------------


def test_planted_communities_are_recovered_and_shuffled_features_do_worse(planted_run):
    network, features, result = planted_run
    shuffled = features.set_axis(np.random.default_rng(1).permutation(features.index))
    baseline = complete_network(network, shuffled, FAST)
    assert result.auroc > 0.75
    assert result.auroc > baseline.auroc + 0.05
    metrics = result.metrics.set_index("metric")
    assert metrics.loc["auroc", "value"] == result.auroc
    assert metrics.loc["auprc", "chance"] == pytest.approx(0.5, abs=0.05)  # one negative each
    assert result.auprc > metrics.loc["auprc", "chance"]
    # Training converged: the loss fell well below its starting value.
    assert list(result.history.columns) == ["epoch", "loss"]
    assert len(result.history) == FAST.epochs
    assert result.history["loss"].iloc[-10:].mean() < 0.8 * result.history["loss"].iloc[0]


def test_scores_table_matches_the_result_and_rescoring(planted_run):
    _, _, result = planted_run
    scores = result.scores
    assert list(scores.columns) == ["source", "target", "score", "label"]
    assert scores["score"].between(0, 1).all()
    assert _pairs(scores[scores["label"] == 1]) == _pairs(result.split.test_positive)
    assert _pairs(scores[scores["label"] == 0]) == _pairs(result.split.test_negative)
    rescored = result.score(scores[["source", "target"]])
    np.testing.assert_allclose(rescored["score"], scores["score"], rtol=1e-5)
    with pytest.raises(CompletionInputError, match="not nodes of the model"):
        result.score(pd.DataFrame({"source": ["G000"], "target": ["NOT_A_GENE"]}))


# --- split and leakage ----------------------------------------------------------------------


def test_split_holds_out_edges_with_same_regulator_negatives():
    network, _ = planted(seed=3)
    genes = sorted(set(network["source"]) | set(network["target"]))
    config = dataclasses.replace(FAST, held_out=0.25, test_negatives_per_positive=2)
    split = split_edges(network, genes, config)
    edges = _pairs(network)
    test_positive, test_negative = _pairs(split.test_positive), _pairs(split.test_negative)
    train_positive, train_negative = _pairs(split.train_positive), _pairs(split.train_negative)

    assert test_positive | train_positive == edges and not test_positive & train_positive
    assert len(test_positive) == round(0.25 * len(edges))
    for negatives in (test_negative, train_negative):
        assert not negatives & edges  # non-edges of the full network
        assert all(source != target for source, target in negatives)
    assert not test_negative & train_negative
    # Same regulators, at the fixed ratio (every regulator here has enough non-targets).
    per_regulator = split.test_positive["source"].value_counts()
    negatives = split.test_negative["source"].value_counts()
    pd.testing.assert_series_equal(negatives.sort_index(), 2 * per_regulator.sort_index())
    training = split.train_positive["source"].value_counts()
    pd.testing.assert_series_equal(
        split.train_negative["source"].value_counts().sort_index(), training.sort_index()
    )
    assert split.summary()["n_pairs"].sum() == len(edges) + len(test_negative) + len(train_negative)


def test_no_test_pair_is_used_in_message_passing_or_training(monkeypatch):
    network, features = planted(seed=4)
    seen_edges: set[tuple[int, int]] = set()
    seen_pairs: set[tuple[int, int]] = set()
    forward = completion.LinkPredictor.forward

    def recording(self, values, edge_index, edge_type, pairs):
        if self.training:
            kept = edge_type == completion.EDGE_TYPES.index("forward")
            seen_edges.update(map(tuple, edge_index[:, kept].T.tolist()))
            seen_pairs.update(map(tuple, pairs.tolist()))
        return forward(self, values, edge_index, edge_type, pairs)

    monkeypatch.setattr(completion.LinkPredictor, "forward", recording)
    result = complete_network(network, features, dataclasses.replace(FAST, epochs=20))
    position = {gene: index for index, gene in enumerate(result.genes)}
    test = {
        (position[source], position[target])
        for source, target in _pairs(result.split.test_positive)
        | _pairs(result.split.test_negative)
    }
    train_positive = {(position[s], position[t]) for s, t in _pairs(result.split.train_positive)}
    assert seen_edges and seen_pairs
    assert not test & seen_edges  # never a message-passing edge
    assert not test & seen_pairs  # never a training target
    assert seen_edges <= train_positive
    # The evaluation graph's forward edges are exactly the training edges.
    edge_index, edge_type = message_passing_graph(result.split.train_positive, result.genes)
    forward_edges = edge_index[:, edge_type == 0].T.tolist()
    assert set(map(tuple, forward_edges)) == train_positive


def test_masking_changes_training():
    network, features = planted(seed=5)
    masked = complete_network(network, features, dataclasses.replace(FAST, epochs=15))
    shown = complete_network(
        network, features, dataclasses.replace(FAST, epochs=15, masked_share=0.0)
    )
    assert not np.allclose(masked.history["loss"], shown.history["loss"])


# --- determinism ----------------------------------------------------------------------------


def test_same_seed_gives_identical_scores_and_another_seed_does_not():
    network, features = planted(seed=6)
    config = dataclasses.replace(FAST, epochs=30)
    first = complete_network(network, features, config)
    torch.manual_seed(123)  # the global RNG must not matter
    second = complete_network(network, features, config)
    pd.testing.assert_frame_equal(first.scores, second.scores)
    pd.testing.assert_frame_equal(first.history, second.history)
    other = complete_network(network, features, dataclasses.replace(config, seed=1))
    assert _pairs(other.split.test_positive) != _pairs(first.split.test_positive)


# --- input errors ---------------------------------------------------------------------------


def test_network_whose_genes_have_no_features_is_rejected():
    network, features = planted(seed=7)
    elsewhere = features.set_axis([f"other{i}" for i in range(len(features))])
    with pytest.raises(CompletionInputError, match="none of the network's .* genes has a row"):
        complete_network(network, elsewhere, FAST)


def test_empty_or_malformed_network_is_rejected():
    _, features = planted(seed=7)
    with pytest.raises(CompletionInputError, match="network has no edges"):
        complete_network(pd.DataFrame(columns=["source", "target", "sign"]), features, FAST)
    with pytest.raises(CompletionInputError, match=r"lacks column\(s\) \['target'\]"):
        complete_network(pd.DataFrame({"source": ["G000"]}), features, FAST)
    one_edge = pd.DataFrame({"source": ["G000", "G000"], "target": ["G001", "G000"]})
    with pytest.raises(CompletionInputError, match="1 usable edge"):
        complete_network(one_edge, features, FAST)
    with pytest.raises(CompletionInputError, match="NaN"):
        complete_network(planted(seed=7)[0], features.replace(features.iloc[0, 0], np.nan), FAST)


def test_edges_of_genes_without_features_are_dropped_with_a_warning(caplog):
    network, features = planted(seed=8)
    dropped = network["target"].iloc[0]
    with caplog.at_level(logging.WARNING, logger="perturbflow.grn.completion"):
        result = complete_network(
            network, features.drop(dropped), dataclasses.replace(FAST, epochs=5)
        )
    assert dropped not in result.genes
    assert "1 of" in caplog.text and dropped in caplog.text


# --- gene features --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset(simulated_screen):
    return read(simulated_screen("tiny"))


def test_expression_features_are_standardised_statistics_and_pc_loadings(dataset, caplog):
    genes = [*dataset.genes[:20], "NOT_MEASURED"]
    with caplog.at_level(logging.WARNING, logger="perturbflow.grn.completion"):
        table = gene_features("expression", dataset, genes=genes, config=TINY_ENCODER)
    assert list(table.index) == genes
    assert list(table.columns[:3]) == ["mean", "variance", "fraction_nonzero"]
    assert list(table.columns[3:]) == [f"pc{i}_loading" for i in range(8)]
    assert (table.loc["NOT_MEASURED"] == 0).all()
    assert "1 of 21 genes have no vector" in caplog.text
    measured = table.iloc[:20]
    np.testing.assert_allclose(measured.mean(), 0, atol=1e-9)
    np.testing.assert_allclose(measured.std(ddof=0), 1, atol=1e-9)
    # The standardised mean keeps the order of the raw means.
    raw = dataset.adata[:, genes[:20]].X
    raw_mean = np.asarray(raw.mean(axis=0)).ravel()
    assert (np.argsort(raw_mean) == np.argsort(measured["mean"].to_numpy())).all()
    # Standardising a column is affine, so the first loadings stay perfectly correlated with
    # each gene's correlation to the first principal component of the z-scored cells.
    cells = dataset.adata.X
    cells = np.asarray(cells.toarray() if hasattr(cells, "toarray") else cells, dtype=np.float64)
    spread = cells.std(axis=0)
    z = (cells - cells.mean(axis=0)) / np.where(spread > 0, spread, 1.0)
    first_component = np.linalg.svd(z, full_matrices=False)[0][:, 0]  # (N,)
    correlation = [
        np.corrcoef(cells[:, dataset.genes.get_loc(gene)], first_component)[0, 1]
        for gene in genes[:20]
    ]
    agreement = np.corrcoef(correlation, measured["pc0_loading"].to_numpy())[0, 1]
    assert abs(agreement) == pytest.approx(1.0, abs=1e-6)


def test_decoder_jacobian_of_a_linear_decoder_is_its_weights():
    autoencoder = PCAAutoencoder(n_genes=7, latent_dim=3)
    cells = np.random.default_rng(0).normal(size=(50, 7)).astype(np.float32)
    autoencoder.fit(cells)
    codes = autoencoder.encode(torch.from_numpy(cells))  # (50, 3)
    jacobian = decoder_jacobian(autoencoder, codes)  # (7, 3)
    np.testing.assert_allclose(jacobian.numpy(), autoencoder.components.T.numpy(), atol=1e-3)


def test_encoder_features_are_per_gene_and_repeat_per_seed(dataset):
    genes = [*dataset.genes[:12], "NOT_MEASURED"]
    first = gene_features("encoder", dataset, genes=genes, config=TINY_ENCODER)
    again = gene_features("encoder", dataset, genes=genes, config=TINY_ENCODER)
    assert first.shape == (13, TINY_ENCODER.latent_dim)
    assert (first.loc["NOT_MEASURED"] == 0).all()
    pd.testing.assert_frame_equal(first, again)
    assert first.iloc[:12].drop_duplicates().shape[0] == 12  # a distinct vector per gene


@pytest.mark.parametrize("readout", ["jacobian", "correlation"])
def test_each_encoder_readout_gives_its_own_per_gene_vectors(dataset, readout):
    genes = list(dataset.genes[:12])
    config = dataclasses.replace(TINY_ENCODER, encoder_readout=readout)
    table = gene_features("encoder", dataset, genes=genes, config=config)
    assert list(table.columns) == [f"latent{i}_{readout}" for i in range(config.latent_dim)]
    pd.testing.assert_frame_equal(
        table, gene_features("encoder", dataset, genes=genes, config=config)
    )
    other = "correlation" if readout == "jacobian" else "jacobian"
    elsewhere = gene_features(
        "encoder", dataset, genes=genes, config=dataclasses.replace(config, encoder_readout=other)
    )
    assert not np.allclose(table.to_numpy(), elsewhere.to_numpy())


def test_latent_correlations_are_pearson_and_zero_for_constants():
    rng = np.random.default_rng(0)
    expression = rng.normal(size=(40, 5))
    expression[:, 4] = 3.0  # a constant gene
    codes = expression[:, :2] @ rng.normal(size=(2, 3)) + rng.normal(size=(40, 3))
    correlations = _correlations(expression, codes)  # (5, 3)
    full = np.corrcoef(expression[:, :4].T, codes.T)  # (7, 7)
    np.testing.assert_allclose(correlations[:4], full[:4, 4:], atol=1e-12)
    np.testing.assert_array_equal(correlations[4], 0.0)
    with pytest.raises(ValueError, match="encoder_readout"):
        FeatureConfig(encoder_readout="loadings")


def test_feature_kind_and_genes_are_checked(dataset):
    with pytest.raises(CompletionInputError, match="unknown feature kind 'pca'"):
        gene_features("pca", dataset, genes=["G0000"])
    with pytest.raises(CompletionInputError, match="genes is empty"):
        gene_features("expression", dataset, genes=[])
    with pytest.raises(CompletionInputError, match="PerturbationDataset or AnnData"):
        gene_features("expression", None, genes=["G0000"])


def _write_gz(path: Path, header: list[str], rows: list[list[object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("\n".join("\t".join(map(str, row)) for row in [header, *rows]) + "\n")


def test_prior_features_follow_shared_go_terms(tmp_path):
    groups = {f"GENE{i}": i % 3 for i in range(12)}
    rows = [[gene, f"GO:{group:07d}", "BP"] for gene, group in groups.items()]
    rows += [[gene, f"GO:{100 + i % 2:07d}", "BP"] for i, gene in enumerate(groups)]
    _write_gz(
        tmp_path / "priors/go_orghs/gene_go_propagated.tsv.gz",
        ["gene_symbol", "go_id", "ontology"],
        rows,
    )
    config = dataclasses.replace(TINY_ENCODER, priors=str(tmp_path))
    genes = [*groups, "ABSENT"]
    table = gene_features("prior:go", None, genes=genes, config=config)
    assert (table.loc["ABSENT"] == 0).all()
    vectors = table.loc[list(groups)].to_numpy()
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    similarity = unit @ unit.T
    label = np.array(list(groups.values()))
    same = (label[:, None] == label[None, :]) & ~np.eye(len(label), dtype=bool)
    assert similarity[same].mean() > similarity[label[:, None] != label[None, :]].mean() + 0.3


_PRIORS = data_dir() / "priors" if data_dir() is not None else None


@pytest.mark.skipif(
    _PRIORS is None or not (_PRIORS / "string_v12/string_ppi_700_ntm.tsv.gz").is_file(),
    reason="no real priors folder with string_v12/ (set PERTURBFLOW_DATA_DIR to the data folder "
    "holding priors/, e.g. ../shared/data)",
)
def test_real_ppi_prior_features_cover_known_genes(tmp_path, caplog):
    # The real STRING edges around four well-known genes: the genome-wide embedding takes
    # seconds, this neighbourhood a fraction of one.
    edges = pd.read_csv(_PRIORS / "string_v12/string_ppi_700_ntm.tsv.gz", sep="\t")
    known = ["TP53", "MDM2", "MYC", "MAX"]
    first, second = edges["gene1_symbol"], edges["gene2_symbol"]
    near = set(second[first.isin(known)]) | set(first[second.isin(known)]) | set(known)
    folder = tmp_path / "priors/string_v12"
    folder.mkdir(parents=True)
    neighbourhood = edges[first.isin(near) & second.isin(near)]
    neighbourhood.to_csv(folder / "string_ppi_700_ntm.tsv.gz", sep="\t", index=False)
    config = dataclasses.replace(TINY_ENCODER, priors=str(tmp_path))
    genes = [*known, "NOT_A_GENE_SYMBOL"]
    with caplog.at_level(logging.WARNING, logger="perturbflow.grn.completion"):
        table = gene_features("prior:ppi", None, genes=genes, config=config)
    assert (table.loc["NOT_A_GENE_SYMBOL"] == 0).all()
    np.testing.assert_allclose(table.loc[known].mean(), 0, atol=1e-9)
    assert (table.loc[known].abs().sum(axis=1) > 0).all()
    assert "1 of 5 genes have no vector" in caplog.text
