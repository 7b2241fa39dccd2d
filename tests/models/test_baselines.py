"""The baselines of docs/method.md §3: reference cases with known answers, then the shared interface.

Reference datasets are built by hand: every perturbed condition's cells are the control cells
shifted by a planted delta, so condition means (and hence the training deltas) are exact.
"""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from _asserts import assert_stored_cells_plus_one_offset
from _configs import FAST_CONFIGS

from perturbflow.data import CONDITION_COLUMN, PerturbationDataset, read
from perturbflow.data.conditions import parse_condition
from perturbflow.data.splits import Split, make_split
from perturbflow.models import MODELS, Model, get_model, load_model
from perturbflow.models.base import CheckpointError, ModelNotFittedError
from perturbflow.models.baselines import (
    EmbeddingConfig,
    LinearConfig,
    MeanShiftModel,
    MissingEmbeddingError,
)
from perturbflow.models.peers import PEERS

# Peers (GEARS) need GO-annotated genes and their own extra; tests/models/test_gears_peer.py
# covers them.
BUILTIN = sorted(name for name in MODELS if name not in PEERS)


def planted_dataset(
    deltas: dict[str, np.ndarray], genes: list[str], *, base: np.ndarray, seed: int = 0
) -> PerturbationDataset:
    """Control cells around ``base``; each condition = the same control cells + its delta."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(0.0, 0.2, (12, len(genes)))  # (n, G)
    control = base[None, :] + noise - noise.mean(axis=0)  # mean exactly ``base``
    blocks = [control] + [control + delta[None, :] for delta in deltas.values()]
    labels = ["ctrl"] * len(control) + [name for name in deltas for _ in range(len(control))]
    assert min(block.min() for block in blocks) > 0, "planted data must look log-normalised"
    adata = ad.AnnData(
        X=np.vstack(blocks).astype(np.float32),
        obs=pd.DataFrame({"condition": labels}, index=[f"c{i}" for i in range(len(labels))]),
        var=pd.DataFrame(index=genes),
    )
    return read(adata)


def custom_split(train: list[str], test: list[str]) -> Split:
    seen = {name for name in train if len(parse_condition(name)) == 1}
    subgroups = {
        name: "unseen_single"
        if len(parse_condition(name)) == 1
        else f"combo_seen{len({g for g in parse_condition(name) if g in seen})}"
        for name in test
    }
    return Split(
        kind="custom",
        seed=0,
        train=("ctrl", *train),
        val=(),
        test=tuple(test),
        subgroups=subgroups,
    )


def pearson(a, b) -> float:
    return float(np.corrcoef(np.asarray(a, dtype=float), np.asarray(b, dtype=float))[0, 1])


@pytest.fixture(scope="module")
def simulated(simulated_screen) -> PerturbationDataset:
    return read(simulated_screen("small"))


@pytest.fixture(scope="module")
def simulation_split(simulated) -> Split:
    return make_split("simulation", simulated.conditions, seed=0)


# --- control mean ------------------------------------------------------------------------------


def test_control_mean_predicts_exactly_no_change(simulated, simulation_split) -> None:
    model = get_model("control_mean").fit(simulated, simulation_split)
    deltas = model.predict_delta(simulation_split.test)
    assert deltas.shape == (len(simulation_split.test), simulated.n_genes)
    assert (deltas.to_numpy() == 0).all()


# --- additive ----------------------------------------------------------------------------------

GENES_20 = [f"G{i:02d}" for i in range(20)]


@pytest.fixture(scope="module")
def additive_case() -> tuple[PerturbationDataset, dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    delta_a = rng.uniform(-0.4, 0.4, 20)
    delta_b = rng.uniform(-0.4, 0.4, 20)
    deltas = {"A": delta_a, "B": delta_b, "A+B": delta_a + delta_b}
    dataset = planted_dataset(deltas, GENES_20, base=rng.uniform(1.5, 3.0, 20))
    return dataset, deltas


def test_additive_is_exact_on_purely_additive_doubles(additive_case) -> None:
    dataset, deltas = additive_case
    split = Split(
        kind="custom",
        seed=0,
        train=("ctrl", "A", "B"),
        val=(),
        test=("A+B",),
        subgroups={"A+B": "combo_seen2"},
    )
    model = get_model("additive").fit(dataset, split)
    predicted = model.predict_delta(["A+B"])
    assert list(predicted.index) == ["A+B"]
    assert list(predicted.columns) == GENES_20
    np.testing.assert_allclose(predicted.loc["A+B"], deltas["A+B"], atol=1e-5)

    n_control = len(dataset.control_expression())
    cells = model.predict(["A+B"], n_cells=n_control, seed=0)  # every control cell, once
    expected = dataset.control_expression().mean(axis=0) + deltas["A+B"]
    np.testing.assert_allclose(cells.X.mean(axis=0), expected, atol=1e-5)


def test_additive_uses_the_mean_single_delta_for_an_unseen_gene(additive_case, caplog) -> None:
    dataset, deltas = additive_case
    model = get_model("additive").fit(dataset, custom_split(["A", "B"], ["A+B"]))
    with caplog.at_level(logging.INFO, logger="perturbflow"):
        predicted = model.predict_delta(["A+Z", "Z"])
    mean_single = (deltas["A"] + deltas["B"]) / 2
    np.testing.assert_allclose(predicted.loc["A+Z"], deltas["A"] + mean_single, atol=1e-5)
    np.testing.assert_allclose(predicted.loc["Z"], mean_single, atol=1e-5)
    assert "Z" in caplog.text


def test_additive_never_sees_test_cells(additive_case) -> None:
    """A+B's cells are in the data but not in train: the fitted deltas contain only A and B."""
    dataset, _ = additive_case
    model = get_model("additive").fit(dataset, custom_split(["A", "B"], ["A+B"]))
    assert sorted(model.train_deltas_.index) == ["A", "B"]
    assert model.seen_genes_ == frozenset({"A", "B"})


@pytest.fixture(scope="module")
def additive_errors(simulated_screen) -> dict[str, float]:
    """Additive's MSE to the true delta on held-out doubles, per planted interaction type."""
    errors = {}
    for kind in ("additive", "synergistic"):
        adata = simulated_screen("small", interaction_mix=((kind, 1.0),))
        dataset = read(adata)
        split = make_split("combo", dataset.conditions, seed=0)
        doubles = split.test_subgroups()["combo_seen2"]
        assert len(doubles) >= 4
        predicted = get_model("additive").fit(dataset, split).predict_delta(doubles)
        truth = adata.uns["synthetic"]["true_delta"].loc[doubles, predicted.columns]
        errors[kind] = float(((predicted - truth) ** 2).to_numpy().mean())
        errors[f"{kind}_pearson"] = float(
            np.mean([pearson(predicted.loc[name], truth.loc[name]) for name in doubles])
        )
    return errors


def test_additive_matches_the_truth_of_simulated_additive_doubles(additive_errors) -> None:
    assert additive_errors["additive_pearson"] > 0.9
    assert additive_errors["additive"] < 0.5 * additive_errors["synergistic"]


# --- linear ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def linear_case():
    """Mean expression for perturbing gene p is b + E W E[p] with a rank-3 gene embedding E.

    E's rows over the training genes are centred, so the model's offset (the mean over training
    conditions) is exactly b and the PCA basis of the centred training means spans E: the
    model ``G W' G[p] + b`` can represent the system exactly. Control cells are not part of the
    system: their mean is b + ``control_shift``, so delta(p) = E W E[p] - control_shift.
    """
    rng = np.random.default_rng(2)
    n_genes, k = 40, 3
    genes = [f"G{i:02d}" for i in range(n_genes)]
    train, test = genes[:15], genes[15:20]
    embedding = rng.normal(0.0, 0.5, (n_genes, k))  # (G, k)
    embedding[:15] -= embedding[:15].mean(axis=0)
    weights = rng.normal(0.0, 1.0, (k, k))  # (k, k)
    offset = rng.uniform(4.0, 6.0, n_genes)  # (G,) b
    control_shift = rng.uniform(-0.5, 0.5, n_genes)  # (G,)
    deltas = {
        gene: embedding @ weights @ embedding[genes.index(gene)] - control_shift
        for gene in train + test
    }
    dataset = planted_dataset(deltas, genes, base=offset + control_shift)
    return dataset, custom_split(train, test), deltas


def test_linear_recovers_a_planted_low_rank_system(linear_case) -> None:
    dataset, split, deltas = linear_case
    model = get_model("linear", LinearConfig(n_components=3, ridge=1e-9)).fit(dataset, split)
    predicted = model.predict_delta(split.test)
    truth = np.vstack([deltas[name] for name in split.test])
    assert np.abs(truth).max() > 0.5, "the held-out effects are not trivial"
    np.testing.assert_allclose(predicted.to_numpy(), truth, rtol=1e-3, atol=1e-3)
    train_fit = model.predict_delta(split.train[1:])
    np.testing.assert_allclose(
        train_fit, np.vstack([deltas[n] for n in split.train[1:]]), atol=1e-3
    )


def test_linear_with_too_few_components_cannot_fit_the_system(linear_case) -> None:
    dataset, split, deltas = linear_case
    model = get_model("linear", LinearConfig(n_components=1, ridge=1e-9)).fit(dataset, split)
    predicted = model.predict_delta(split.test).to_numpy()
    truth = np.vstack([deltas[name] for name in split.test])
    assert np.abs(predicted - truth).max() > 0.05


def test_linear_predicts_no_change_for_an_unmeasured_gene(linear_case) -> None:
    dataset, split, deltas = linear_case
    model = get_model("linear", LinearConfig(n_components=3, ridge=1e-9)).fit(dataset, split)
    # No G row: the prediction is the offset b (the mean training expression) minus control.
    mean_train_delta = np.mean([deltas[name] for name in split.train[1:]], axis=0)
    np.testing.assert_allclose(
        model.predict_delta(["NOT_MEASURED"]).iloc[0], mean_train_delta, atol=1e-4
    )


# --- ridge and nearest neighbour on a prior embedding table ------------------------------------

PRIOR_GENES = [f"P{i:02d}" for i in range(16)]
MEASURED = [f"G{i:02d}" for i in range(30)]


@pytest.fixture(scope="module")
def embedding_case(tmp_path_factory):
    """A 4-d embedding per perturbed gene; delta(p) = M e_p + c (linear in the embedding)."""
    rng = np.random.default_rng(3)
    table = pd.DataFrame(
        rng.normal(0.0, 1.0, (len(PRIOR_GENES), 4)),
        index=PRIOR_GENES,
        columns=["e0", "e1", "e2", "e3"],
    )
    mixing = rng.normal(0.0, 0.1, (len(MEASURED), 4))  # (G, d)
    intercept = rng.normal(0.0, 0.1, len(MEASURED))  # (G,)
    deltas = {gene: mixing @ table.loc[gene].to_numpy() + intercept for gene in PRIOR_GENES}
    dataset = planted_dataset(deltas, MEASURED, base=rng.uniform(2.0, 3.0, len(MEASURED)))
    path = tmp_path_factory.mktemp("embedding") / "prior.csv"
    table.to_csv(path)
    split = custom_split(PRIOR_GENES[:12], PRIOR_GENES[12:])
    return dataset, split, deltas, table, path


def test_ridge_predicts_unseen_singles_from_a_linear_embedding(embedding_case) -> None:
    dataset, split, deltas, _, path = embedding_case
    model = get_model("ridge", EmbeddingConfig(embedding=str(path), alpha=1e-6))
    predicted = model.fit(dataset, split).predict_delta(split.test)
    truth = np.vstack([deltas[name] for name in split.test])
    np.testing.assert_allclose(predicted.to_numpy(), truth, atol=1e-4)


def test_ridge_on_a_combination_uses_the_mean_of_its_gene_embeddings(embedding_case) -> None:
    dataset, split, deltas, _, path = embedding_case
    model = get_model("ridge", EmbeddingConfig(embedding=str(path), alpha=1e-6))
    predicted = model.fit(dataset, split).predict_delta(["P13+P14"])
    # delta is affine in the embedding, so delta(mean embedding) = mean of the deltas.
    np.testing.assert_allclose(predicted.iloc[0], (deltas["P13"] + deltas["P14"]) / 2, atol=1e-4)


def test_ridge_checkpoint_does_not_need_the_embedding_file(embedding_case, tmp_path) -> None:
    dataset, split, _, table, _ = embedding_case
    copy = tmp_path / "prior.tsv"
    table.to_csv(copy, sep="\t")
    model = get_model("ridge", EmbeddingConfig(embedding=str(copy), alpha=1e-6))
    expected = model.fit(dataset, split).predict_delta(split.test)
    checkpoint = model.save(tmp_path / "ridge.npz")
    copy.unlink()
    pd.testing.assert_frame_equal(load_model(checkpoint).predict_delta(split.test), expected)


def test_missing_embedding_error_names_the_gene(embedding_case) -> None:
    dataset, split, _, _, path = embedding_case
    model = get_model("ridge", EmbeddingConfig(embedding=str(path), missing="error"))
    model.fit(dataset, split)
    with pytest.raises(MissingEmbeddingError, match="NOVEL1") as error:
        model.predict_delta(["P12", "NOVEL1+P13"])
    assert isinstance(error.value, KeyError)


def test_missing_embedding_mean_warns_once_and_uses_the_mean(embedding_case, caplog) -> None:
    dataset, split, deltas, _, path = embedding_case
    model = get_model("ridge", EmbeddingConfig(embedding=str(path), alpha=1e-6, missing="mean"))
    model.fit(dataset, split)
    caplog.clear()  # fit logs the table's coverage (INFO) when a CLI test raised the log level
    with caplog.at_level(logging.WARNING, logger="perturbflow"):
        predicted = model.predict_delta(["NOVEL1"])
    assert [r.levelno for r in caplog.records] == [logging.WARNING], [
        (r.name, r.getMessage()) for r in caplog.records
    ]
    assert "NOVEL1" in caplog.text
    # The mean embedding of the training genes maps to the mean training delta.
    mean_train_delta = np.mean([deltas[name] for name in split.train[1:]], axis=0)
    np.testing.assert_allclose(predicted.iloc[0], mean_train_delta, atol=1e-4)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="perturbflow"):
        model.predict_delta(["NOVEL1"])
    assert caplog.records == [], "the same gene is reported once"


def test_invalid_missing_option_is_refused() -> None:
    with pytest.raises(ValueError, match="missing"):
        EmbeddingConfig(missing="ignore")


BAD_TABLES = {
    "duplicate": ("gene,e0,e1\nP00,1,2\nP00,3,4\nP01,5,6\n", "duplicate gene symbols.*P00"),
    "non_numeric": ("gene,e0,label\nP00,1,x\nP01,2,y\n", "non-numeric.*label"),
}


@pytest.mark.parametrize("kind", sorted(BAD_TABLES))
@pytest.mark.parametrize("name", ["ridge", "nearest_neighbor"])
def test_bad_embedding_tables_raise_clear_errors(
    name: str, kind: str, embedding_case, tmp_path
) -> None:
    dataset, split, *_ = embedding_case
    text, message = BAD_TABLES[kind]
    path = tmp_path / f"{kind}.csv"
    path.write_text(text)
    model = get_model(name, EmbeddingConfig(embedding=str(path)))
    with pytest.raises(ValueError, match=message) as error:
        model.fit(dataset, split)
    assert str(path) in str(error.value)


def test_missing_embedding_table_names_the_path(embedding_case, tmp_path) -> None:
    dataset, split, *_ = embedding_case
    path = tmp_path / "absent.csv"
    with pytest.raises(FileNotFoundError, match="absent.csv"):
        get_model("ridge", EmbeddingConfig(embedding=str(path))).fit(dataset, split)


def test_nearest_neighbor_returns_the_delta_of_the_closest_training_condition(
    embedding_case, tmp_path
) -> None:
    dataset, split, deltas, table, _ = embedding_case
    # Each held-out gene's vector is a scaled, slightly perturbed copy of one training gene.
    closest = {"P12": "P03", "P13": "P07", "P14": "P00", "P15": "P11"}
    rng = np.random.default_rng(4)
    planted = table.copy()
    for gene, neighbour in closest.items():
        planted.loc[gene] = 2.0 * table.loc[neighbour] + rng.normal(0.0, 0.01, 4)
    path = tmp_path / "planted.csv"
    planted.to_csv(path)
    model = get_model("nearest_neighbor", EmbeddingConfig(embedding=str(path)))
    predicted = model.fit(dataset, split).predict_delta(list(closest))
    for gene, neighbour in closest.items():
        np.testing.assert_allclose(predicted.loc[gene], deltas[neighbour], atol=1e-5)


# --- every registered model: the shared interface ----------------------------------------------


@pytest.fixture(scope="module", params=BUILTIN)
def fitted(request, simulated, simulation_split) -> Model:
    return get_model(request.param, FAST_CONFIGS.get(request.param)).fit(
        simulated, simulation_split
    )


def a_test_double(split: Split) -> str:
    return sorted(name for name in split.test if len(parse_condition(name)) == 2)[0]


def test_predict_returns_n_cells_per_condition(fitted, simulated, simulation_split) -> None:
    test = list(simulation_split.test)
    predicted = fitted.predict(test, n_cells=7, seed=3)
    assert isinstance(predicted, ad.AnnData)
    assert predicted.shape == (7 * len(test), simulated.n_genes)
    assert list(predicted.var_names) == list(simulated.genes)
    counts = predicted.obs[CONDITION_COLUMN].astype(str).value_counts()
    assert counts.to_dict() == dict.fromkeys(test, 7)
    assert np.isfinite(predicted.X).all()
    assert predicted.uns["perturbflow"]["model"] == fitted.name


def test_predict_labels_are_canonical(fitted, simulation_split) -> None:
    double = a_test_double(simulation_split)
    reversed_label = "+".join(sorted(parse_condition(double), reverse=True))
    assert reversed_label != double
    predicted = fitted.predict([reversed_label, "ctrl"], n_cells=2, seed=0)
    assert set(predicted.obs[CONDITION_COLUMN].astype(str)) == {double, "ctrl"}


def test_predict_is_seeded(fitted, simulation_split) -> None:
    test = list(simulation_split.test)
    first = fitted.predict(test, n_cells=7, seed=3)
    np.testing.assert_array_equal(fitted.predict(test, n_cells=7, seed=3).X, first.X)
    assert not np.array_equal(fitted.predict(test, n_cells=7, seed=4).X, first.X)


def test_gene_order_does_not_change_the_prediction(fitted, simulation_split) -> None:
    double = a_test_double(simulation_split)
    reversed_label = "+".join(sorted(parse_condition(double), reverse=True))
    forward = fitted.predict_delta([double])
    backward = fitted.predict_delta([reversed_label])
    assert list(backward.index) == [double]
    pd.testing.assert_frame_equal(backward, forward)
    np.testing.assert_array_equal(
        fitted.predict([reversed_label], n_cells=5, seed=1).X,
        fitted.predict([double], n_cells=5, seed=1).X,
    )


def test_control_has_zero_predicted_delta(fitted) -> None:
    assert (fitted.predict_delta(["ctrl"]).to_numpy() == 0).all()


def test_mean_shift_cells_average_to_control_mean_plus_delta(fitted, simulation_split) -> None:
    if not isinstance(fitted, MeanShiftModel):
        pytest.skip(f"{fitted.name} is not a mean-shift model")
    name = simulation_split.test[0]
    expected = fitted.control_mean_ + fitted.predict_delta([name]).iloc[0].to_numpy()
    for n_cells in (1, 7):  # exact for any draw: the drawn cells are recentred
        cells = np.asarray(fitted.predict([name], n_cells=n_cells, seed=3).X)
        np.testing.assert_allclose(cells.mean(axis=0), expected, atol=1e-4)
    # Each predicted cell is a stored control cell moved by one offset shared by the draw.
    cells = np.asarray(fitted.predict([name], n_cells=7, seed=3).X)
    assert_stored_cells_plus_one_offset(cells, fitted.control_cells_)


def test_save_and_load_model_round_trip(fitted, simulation_split, tmp_path) -> None:
    test = list(simulation_split.test)
    path = fitted.save(tmp_path / "model.npz")
    loaded = load_model(path)
    assert type(loaded) is type(fitted)
    assert loaded.config == fitted.config
    pd.testing.assert_frame_equal(loaded.predict_delta(test), fitted.predict_delta(test))
    np.testing.assert_array_equal(
        loaded.predict(test, n_cells=4, seed=2).X, fitted.predict(test, n_cells=4, seed=2).X
    )
    assert type(fitted).load(path).name == fitted.name


def test_save_refuses_to_overwrite(fitted, tmp_path) -> None:
    path = fitted.save(tmp_path / "model.npz")
    original = path.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite"):
        fitted.save(path)
    assert path.read_bytes() == original
    fitted.save(path, overwrite=True)
    assert load_model(path).name == fitted.name


def test_loading_the_checkpoint_of_another_model_is_refused(fitted, tmp_path) -> None:
    path = fitted.save(tmp_path / "model.npz")
    other = next(MODELS[name] for name in BUILTIN if name != fitted.name)
    with pytest.raises(CheckpointError, match=fitted.name):
        other.load(path)


@pytest.mark.parametrize("name", BUILTIN)
def test_using_a_model_before_fit_raises(name: str, tmp_path) -> None:
    model = get_model(name)
    with pytest.raises(ModelNotFittedError, match="fit"):
        model.predict(["A"], n_cells=2)
    with pytest.raises(ModelNotFittedError):
        model.predict_delta(["A"])
    with pytest.raises(ModelNotFittedError):
        model.save(tmp_path / "model.npz")
    assert not (tmp_path / "model.npz").exists()


@pytest.mark.parametrize("name", ["additive", "calibrated_additive", "combinator", "ridge"])
def test_gene_names_are_matched_by_letter_case_and_unknown_genes_warned_once(
    name, simulated, simulation_split, caplog
) -> None:
    model = get_model(name).fit(simulated, simulation_split)
    gene = sorted(model.seen_genes_ & set(model.genes_))[0]
    with caplog.at_level(logging.INFO, logger="perturbflow.models"):
        lower = model.predict_delta([gene.lower()])
        unknown = model.predict_delta(["NOTAGENE", f"{gene}+NOTAGENE"])
        model.predict_delta(["NOTAGENE"])
    assert list(lower.index) == [gene]
    np.testing.assert_array_equal(lower.to_numpy(), model.predict_delta([gene]).to_numpy())
    assert list(unknown.index) == ["NOTAGENE", f"{gene}+NOTAGENE"]
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "NOTAGENE" in r.getMessage()
    ]
    assert len(warnings) == 1  # once, not per call or per condition
    assert any(f"{gene.lower()!r} matched to {gene!r}" in r.getMessage() for r in caplog.records)
