"""scbig: the composed model behind the one interface, on a tiny simulated screen."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from _asserts import assert_stored_cells_plus_one_offset
from _configs import TINY_SCBIG  # noqa: E402

from perturbflow.data import read
from perturbflow.data.splits import make_split
from perturbflow.data.synthetic import simulate
from perturbflow.models import MODELS, get_model, load_model
from perturbflow.models.condition_encoder import UnknownGeneError
from perturbflow.models.scbig import ScBIG, ScBIGConfig, objectives
from perturbflow.models.scbig.model import _FlowData
from perturbflow.models.scbig.modules import pooled_program_deltas

TINY = TINY_SCBIG


@pytest.fixture(scope="module")
def data():
    adata = simulate(
        n_genes=40,
        n_programs=4,
        n_perturbed=8,
        n_unmeasured=0,
        n_doubles=8,
        n_control_cells=200,
        n_cells_per_condition=30,
        seed=0,
    )
    dataset = read(adata)
    split = make_split("simulation", dataset.conditions, seed=0)
    return dataset, split


@pytest.fixture(scope="module")
def fitted(data):
    dataset, split = data
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    model = ScBIG(TINY).fit(dataset, split)
    torch.set_num_threads(previous)
    return model


def test_registered_behind_the_model_interface():
    assert MODELS["scbig"] is ScBIG
    assert isinstance(get_model("scbig", TINY), ScBIG)


def test_predict_returns_cells_for_every_kind_of_condition(fitted, data):
    dataset, split = data
    test = list(split.test)
    cells = fitted.predict(test, n_cells=7, seed=1)
    assert cells.shape == (7 * len(test), dataset.n_genes)
    assert list(cells.var_names) == list(dataset.genes)
    assert set(cells.obs["perturbflow_condition"]) == set(test)
    assert np.isfinite(cells.X).all()
    assert set(split.subgroups[c] for c in test) >= {"unseen_single", "combo_seen1"}
    assert "program" in cells.var and cells.var["program"].nunique() == 4


def test_same_seed_same_cells_and_gene_order_free(fitted, data):
    _, split = data
    double = next(c for c in split.test if "+" in c)
    a, b = double.split("+")
    first = fitted.predict([f"{a}+{b}"], n_cells=5, seed=3).X
    again = fitted.predict([f"{b}+{a}"], n_cells=5, seed=3).X
    other = fitted.predict([double], n_cells=5, seed=4).X
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)


def test_programs_frame(fitted, data):
    dataset, _ = data
    programs = fitted.programs_
    assert list(programs.columns) == ["gene", "program", "order"]
    assert list(programs["gene"]) == list(dataset.genes)
    assert sorted(programs["order"]) == list(range(dataset.n_genes))


def test_control_prediction_is_control_cells_on_the_control_mean(fitted):
    cells = np.asarray(fitted.predict(["ctrl"], n_cells=10, seed=0).X)
    np.testing.assert_allclose(cells.mean(axis=0), fitted.control_mean_, atol=1e-4)
    assert_stored_cells_plus_one_offset(cells, fitted.control_cells_)


def test_save_load_round_trip(fitted, data, tmp_path):
    _, split = data
    path = fitted.save(tmp_path / "scbig.npz")
    loaded = load_model(path)
    assert isinstance(loaded, ScBIG) and loaded.config == TINY
    test = list(split.test)[:4]
    np.testing.assert_allclose(
        loaded.predict(test, n_cells=6, seed=2).X,
        fitted.predict(test, n_cells=6, seed=2).X,
        atol=1e-5,
    )
    assert loaded.programs_.equals(fitted.programs_)
    assert loaded.mean_weights_ == fitted.mean_weights_
    assert loaded.mean_weight_cv_ == fitted.mean_weight_cv_
    # The start model (calibrated scales, target-aware fill) survives too.
    assert (
        loaded.start_.additive.estimator_.target_scales
        == fitted.start_.additive.estimator_.target_scales
    )
    pd.testing.assert_frame_equal(
        loaded.start_.additive.predict_delta(list(split.test)),
        fitted.start_.additive.predict_delta(list(split.test)),
    )
    with pytest.raises(FileExistsError):
        fitted.save(path)


def test_checkpoint_with_an_unknown_setting_is_refused(fitted, tmp_path):
    from perturbflow.models.base import CheckpointError, read_checkpoint, write_checkpoint

    header, arrays = read_checkpoint(fitted.save(tmp_path / "new.npz"))
    config = {**header["config"], "flow_mean_weight": 0.5}
    path = write_checkpoint(
        tmp_path / "old.npz", model="scbig", config=config, meta=header["meta"], arrays=arrays
    )
    with pytest.raises(CheckpointError, match="flow_mean_weight"):
        load_model(path)


def test_zero_velocity_predicts_the_calibrated_additive_means(data):
    dataset, split = data
    model = ScBIG(dataclasses.replace(TINY, flow_steps=2, ae_epochs=1)).fit(dataset, split)
    with torch.no_grad():
        model.velocity_.output.weight.zero_()
        model.velocity_.output.bias.zero_()
    model.mean_weights_ = dict.fromkeys(model.mean_weights_, 1.0)  # the flow's mean, all of it
    baseline = get_model("calibrated_additive").fit(dataset, split)
    test = list(split.test)
    expected = baseline.predict_delta(test)
    predicted = model.predict_delta(test, n_cells=37, seed=4)
    np.testing.assert_allclose(predicted.to_numpy(), expected.to_numpy(), atol=2e-5)
    assert np.abs(expected.to_numpy()).max() > 0.1  # the start is not trivially zero


def test_predict_delta_and_uncertainty(fitted, data):
    _, split = data
    test = list(split.test)[:3]
    delta = fitted.predict_delta(test, n_cells=50)
    spread = fitted.predict_uncertainty(test, n_seeds=3, n_cells=20)
    assert delta.shape == spread.shape == (3, fitted.genes_.size)
    assert (spread.to_numpy() >= 0).all() and spread.to_numpy().sum() > 0


def test_unknown_gene_is_an_error_not_a_zero_vector(data):
    dataset, split = data
    model = ScBIG(dataclasses.replace(TINY, missing_gene="error", flow_steps=2, ae_epochs=1))
    model.fit(dataset, split)
    with pytest.raises(UnknownGeneError, match="NOTAGENE"):
        model.predict(["NOTAGENE"], n_cells=2)


@pytest.mark.parametrize(
    "ablation",
    [
        {"programs": "random"},
        {"autoencoder": "mlp"},
        {"autoencoder": "pca"},
        {"alignment": False},
        {"ot_pairing": False},
        {"start": "control"},
        {"start": "combinator"},
        {"delta_conditioning": False},
        {"calibrate_prior": False},
        {"target_aware_prior": False},
        {"unseen_rate": 1.0},
    ],
)
def test_ablations_fit_and_predict(data, ablation):
    dataset, split = data
    config = dataclasses.replace(TINY, flow_steps=4, ae_epochs=1, **ablation)
    cells = ScBIG(config).fit(dataset, split).predict(list(split.test)[:2], n_cells=3)
    assert cells.n_obs == 6 and np.isfinite(cells.X).all()


def test_invalid_config_names_the_field():
    with pytest.raises(ValueError, match="autoencoder"):
        ScBIGConfig(autoencoder="vae")
    with pytest.raises(ValueError, match="flow_steps"):
        ScBIGConfig(flow_steps=0)


def test_interrupted_training_resumes_to_the_same_result(data, tmp_path, monkeypatch):
    dataset, split = data
    config = dataclasses.replace(TINY, flow_steps=12, val_every=4, alignment=False)
    reference = ScBIG(config).fit(dataset, split)

    original = objectives.FlowObjective.training_loss

    def crash_at_step_9(self, step, *args):
        if step == 9:
            raise RuntimeError("node preempted")  # the job dies mid-way through stage 2
        return original(self, step, *args)

    monkeypatch.setattr(objectives.FlowObjective, "training_loss", crash_at_step_9)
    with pytest.raises(RuntimeError, match="node preempted"):
        ScBIG(config).fit(dataset, split, checkpoint_dir=tmp_path)
    assert (tmp_path / "flow_cv" / "last.ckpt").exists()  # the cross-validation flow died
    monkeypatch.setattr(objectives.FlowObjective, "training_loss", original)
    resumed = ScBIG(config).fit(dataset, split, checkpoint_dir=tmp_path)

    assert resumed.history_["flow_steps"] == reference.history_["flow_steps"] == 12
    for key, value in reference.velocity_.state_dict().items():
        torch.testing.assert_close(resumed.velocity_.state_dict()[key], value)


def _start_and_cells(model, name, weight, monkeypatch, n_cells=40):
    """Start cells, the flow's change and predicted cells for one fixed draw, at ``weight``."""
    with monkeypatch.context() as patch:
        patch.setattr(model, "_mean_weight", lambda _: weight)
        parts = (model.start_, model.condition_model_, model.velocity_)
        start, change = model._flow_change(name, n_cells, np.random.default_rng(5), *parts)
        cells = model._predict_cells(name, n_cells, np.random.default_rng(5))
    return start, change, cells


def test_mean_weight_scales_only_the_mean_change(fitted, data, monkeypatch):
    _, split = data
    seen = next(name for name in split.train if name != "ctrl" and len(name.split("+")) == 1)
    start, change, kept = _start_and_cells(fitted, seen, 1.0, monkeypatch)
    np.testing.assert_allclose(kept, start + change, atol=1e-5)
    start, change, shaped = _start_and_cells(fitted, seen, 0.0, monkeypatch)
    # Weight 0: the start's mean, with the flow's reshaping around it.
    np.testing.assert_allclose(shaped.mean(axis=0), start.mean(axis=0), atol=1e-4)
    np.testing.assert_allclose(
        shaped - shaped.mean(axis=0), (start + change) - (start + change).mean(axis=0), atol=1e-4
    )
    assert np.abs(change).max() > 1e-3  # the flow does move cells, so the test can fail


def test_each_condition_takes_its_kind_s_weight(fitted, data, monkeypatch):
    dataset, split = data
    weights = {"seen_single": 0.1, "unseen_single": 0.2, "combo_seen0": 0.3}
    weights |= {"combo_seen1": 0.4, "combo_seen2": 0.5}
    monkeypatch.setattr(fitted, "mean_weights_", weights)
    for name in split.test:
        assert fitted._mean_weight(name) == weights[split.subgroups[name]]
    single = next(name for name in split.train if name != "ctrl" and "+" not in name)
    assert fitted._mean_weight(single) == 0.1


def test_cv_fold_hides_genes_and_doubles_of_training_only(data):
    dataset, split = data
    model = ScBIG(dataclasses.replace(TINY, cv_hidden_genes=0.25, cv_doubles=0.5))
    train = [name for name in split.train if name != "ctrl"]
    inner, held = model._cv_fold(train)
    assert sorted(inner + held) == sorted(train) and not set(inner) & set(held)
    hidden = {n for n in held if "+" not in n}
    assert hidden, "some seen genes are hidden"
    # No inner condition touches a hidden gene; every held-out double either touches one or is
    # a double of genes still seen.
    assert not any(set(n.split("+")) & hidden for n in inner)
    assert model._cv_fold(train) == (inner, held)  # deterministic per seed
    none = ScBIG(dataclasses.replace(TINY, cv_hidden_genes=0.0, cv_doubles=0.0))
    assert none._cv_fold(train) == (train, [])


def test_mean_weights_are_chosen_per_kind_on_held_out_training_conditions(data, monkeypatch):
    dataset, split = data
    config = dataclasses.replace(TINY, cv_hidden_genes=0.25, cv_doubles=0.5, cv_min_conditions=2)
    model = ScBIG(config)
    train = [name for name in split.train if name != "ctrl"]
    _, held = model._cv_fold(train)
    real = {name: dataset.expression(name).mean(axis=0) for name in held}

    def fake_train_flow(start, inner, val, data, folder, stage):
        assert stage == "flow_cv" and not set(inner) & set(held)
        assert not start.seen & {name for name in held if "+" not in name}  # hidden genes
        return None, None

    def planted(name, n_cells, generator, start, condition_model, velocity):
        # Singles: the flow's mean change overshoots the real mean by 4/3 (best weight 0.75);
        # combinations: it points the wrong way (best weight 0).
        factor = 4 / 3 if "+" not in name else -3.0
        return np.zeros((4, dataset.n_genes), np.float32), np.tile(real[name] * factor, (4, 1))

    monkeypatch.setattr(model, "_train_flow", fake_train_flow)
    monkeypatch.setattr(model, "_flow_change", planted)
    model.genes_ = dataset.genes
    model.control_mean_ = dataset.control_expression().mean(axis=0)
    cells = {name: dataset.expression(name) for name in train}
    weights = model._choose_mean_weights(dataset, train, [], _FlowData(cells, {}), None)
    counts = {kind: row["n_conditions"] for kind, row in model.mean_weight_cv_.items()}
    assert counts["unseen_single"] >= 2
    assert weights["unseen_single"] == 0.75
    assert weights["seen_single"] == 0.0  # no held-out condition can judge it
    for kind in counts:
        if kind.startswith("combo"):
            assert weights[kind] == 0.0
    fixed = ScBIG(dataclasses.replace(TINY, mean_weight=0.3))
    assert set(fixed._choose_mean_weights(dataset, train, [], None, None).values()) == {0.3}


def test_pooled_deltas_are_order_free_and_see_interactions():
    rng = np.random.default_rng(0)
    membership = np.repeat(np.eye(3), 4, axis=1) / 4  # (3 programs, 12 genes)
    a, b = rng.normal(size=(2, 12))
    both = pooled_program_deltas(np.vstack([a, b]), membership)
    np.testing.assert_allclose(both, pooled_program_deltas(np.vstack([b, a]), membership))
    za, zb = membership @ a, membership @ b
    np.testing.assert_allclose(both[:3], za + zb)
    np.testing.assert_allclose(both[3:6], za * zb)
    np.testing.assert_allclose(both[6:9], np.maximum(za, zb))
    single = pooled_program_deltas(a[None], membership)
    np.testing.assert_allclose(single[3:6], 0.0)


def test_delta_conditioning_changes_the_condition_embedding(fitted, data):
    _, split = data
    assert fitted.condition_model_.delta_mlp is not None
    names = [n for n in split.test][:3]
    with_deltas = fitted.condition_model_.encode(names)
    without = fitted.condition_model_.encoder.encode(names)
    assert not torch.allclose(with_deltas, without)
    plain = ScBIG(dataclasses.replace(TINY, delta_conditioning=False, flow_steps=2, ae_epochs=1))
    dataset, split = data
    assert plain.fit(dataset, split).condition_model_.delta_mlp is None


@pytest.mark.parametrize("field", ["mean_weight", "cv_hidden_genes", "cv_doubles"])
def test_mean_weight_settings_are_checked(field):
    with pytest.raises(ValueError, match=field):
        ScBIGConfig(**{field: 1.5})


def test_combinator_start_round_trips_and_shifts_by_the_combinator(data, tmp_path):
    dataset, split = data
    config = dataclasses.replace(TINY, start="combinator", flow_steps=2, ae_epochs=1)
    model = ScBIG(config).fit(dataset, split)
    test = list(split.test)
    combinator = get_model("combinator").fit(dataset, split)
    np.testing.assert_allclose(
        model.start_.shifts(test), combinator.predict_delta(test).to_numpy(), atol=1e-5
    )
    loaded = load_model(model.save(tmp_path / "combinator_start.npz"))
    assert loaded.start_.combinator is not None
    np.testing.assert_allclose(
        loaded.predict(test, n_cells=5, seed=1).X,
        model.predict(test, n_cells=5, seed=1).X,
        atol=1e-5,
    )
