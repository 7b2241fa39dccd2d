"""scbig: the composed model behind the one interface, on a tiny simulated screen."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from _asserts import assert_stored_cells_plus_one_offset
from _configs import TINY_SCBIG  # noqa: E402

from perturbflow.data import read
from perturbflow.data.splits import make_split
from perturbflow.data.synthetic import simulate
from perturbflow.models import MODELS, get_model, load_model
from perturbflow.models.condition_encoder import UnknownGeneError
from perturbflow.models.scbig import ScBIG, ScBIGConfig, plans

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
    # The target-aware prior (own-column scales and fill) survives too.
    assert loaded.shift_prior_.target_aware and fitted.shift_prior_.target_aware
    assert loaded.shift_prior_.target_scales == fitted.shift_prior_.target_scales
    np.testing.assert_allclose(
        loaded.shift_prior_.shifts(list(split.test)), fitted.shift_prior_.shifts(list(split.test))
    )
    with pytest.raises(FileExistsError):
        fitted.save(path)


def test_checkpoint_from_before_target_aware_prior_keeps_its_behaviour(fitted, tmp_path):
    from perturbflow.models.base import read_checkpoint, write_checkpoint

    header, arrays = read_checkpoint(fitted.save(tmp_path / "new.npz"))
    config = {
        k: v
        for k, v in header["config"].items()
        if k not in ("target_aware_prior", "calibrated_flow_mean_weight")
    }
    old_state = ("target_scale_keys", "target_scale_values", "target_aware", "on_target")
    arrays = {k: v for k, v in arrays.items() if k.split("/", 1)[-1] not in old_state}
    path = write_checkpoint(
        tmp_path / "old.npz", model="scbig", config=config, meta=header["meta"], arrays=arrays
    )
    loaded = load_model(path)
    assert loaded.config.target_aware_prior is False
    assert loaded.config.calibrated_flow_mean_weight is None
    assert not loaded.shift_prior_.target_aware and loaded.shift_prior_.target_scales == {}
    assert load_model(tmp_path / "new.npz").config == fitted.config


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
        {"additive_prior": False},
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

    original = plans.FlowPlan.training_step

    def crash_at_step_9(self, batch, batch_idx):
        if self.global_step == 9:
            raise RuntimeError("node preempted")  # the job dies mid-way through stage 2
        return original(self, batch, batch_idx)

    monkeypatch.setattr(plans.FlowPlan, "training_step", crash_at_step_9)
    with pytest.raises(RuntimeError, match="node preempted"):
        ScBIG(config).fit(dataset, split, checkpoint_dir=tmp_path)
    assert (tmp_path / "flow" / "last.ckpt").exists()
    monkeypatch.setattr(plans.FlowPlan, "training_step", original)
    resumed = ScBIG(config).fit(dataset, split, checkpoint_dir=tmp_path)

    assert resumed.history_["flow_steps"] == reference.history_["flow_steps"] == 12
    for key, value in reference.velocity_.state_dict().items():
        torch.testing.assert_close(resumed.velocity_.state_dict()[key], value)


def _start_and_cells(model, name, weight, n_cells=40):
    """Start cells, the flow's change and predicted cells for one fixed draw, at ``weight``."""
    previous = model.mean_weight_
    model.mean_weight_ = weight
    try:
        start, change = model._flow_change(name, n_cells, np.random.default_rng(5))
        cells = model._predict_cells(name, n_cells, np.random.default_rng(5))
    finally:
        model.mean_weight_ = previous
    return start, change, cells


def test_flow_mean_weight_scales_only_the_mean_change(fitted, data):
    _, split = data
    seen = next(name for name in split.train if name != "ctrl" and len(name.split("+")) == 1)
    start, change, kept = _start_and_cells(fitted, seen, 1.0)
    np.testing.assert_allclose(kept, start + change, atol=1e-5)
    start, change, shaped = _start_and_cells(fitted, seen, 0.0)
    # Weight 0: the additive mean, with the flow's reshaping around it.
    np.testing.assert_allclose(shaped.mean(axis=0), start.mean(axis=0), atol=1e-4)
    np.testing.assert_allclose(
        shaped - shaped.mean(axis=0), (start + change) - (start + change).mean(axis=0), atol=1e-4
    )
    assert np.abs(change).max() > 1e-3  # the flow does move cells, so the test can fail


def test_unseen_gene_conditions_use_the_unseen_weight(fitted, data):
    dataset, split = data
    seen = set(fitted.seen_genes_)
    unseen = next(name for name in split.test if not set(name.split("+")) <= seen)
    assert fitted._mean_weight(unseen) == fitted.config.unseen_flow_mean_weight == 0.0
    start, _, cells = _start_and_cells(fitted, unseen, 1.0)
    np.testing.assert_allclose(cells.mean(axis=0), start.mean(axis=0), atol=1e-4)


def test_mean_weight_is_chosen_on_validation(fitted, data, monkeypatch):
    dataset, split = data
    assert fitted.mean_weight_ in (0.0, 0.25, 0.5, 0.75, 1.0)
    assert fitted.history_["flow_mean_weight"] == fitted.mean_weight_
    seen = set(fitted.seen_genes_)
    # Judged on conditions whose genes all occur in training (training conditions stand in).
    val = [name for name in split.train if name != "ctrl"][:4]
    unseen = [name for name in split.test if not set(name.split("+")) <= seen][:2]
    assert unseen
    real = {name: dataset.expression(name).mean(axis=0) for name in val + unseen}
    # The flow's mean change overshoots the real change by 4/3: the best grid weight is 0.75.
    # On the unseen-gene conditions it would be 0 — they must not count.
    start_cells = np.zeros((4, dataset.n_genes), np.float32)

    def planted(name, n_cells, generator):
        factor = 4 / 3 if name in val else 50.0
        return start_cells, np.tile(real[name] * factor, (4, 1))

    monkeypatch.setattr(fitted, "_flow_change", planted)
    assert fitted._select_mean_weight(dataset, val) == 0.75
    assert fitted._select_mean_weight(dataset, val + unseen) == 0.75
    assert fitted._select_mean_weight(dataset, unseen) == 0.0
    fixed = ScBIG(dataclasses.replace(TINY, flow_mean_weight=0.3))
    assert fixed._select_mean_weight(dataset, val) == 0.3
    assert fixed._select_mean_weight(dataset, []) == 0.3
    assert ScBIG(TINY)._select_mean_weight(dataset, []) == 1.0


def test_calibrated_conditions_keep_the_calibrated_mean(fitted, data, monkeypatch):
    dataset, split = data
    seen = set(fitted.seen_genes_)
    double = next(
        name
        for name in dataset.conditions
        if len(name.split("+")) == 2 and set(name.split("+")) <= seen
    )
    category = (2, sum(g not in fitted.shift_prior_.genes for g in double.split("+")))
    monkeypatch.setattr(fitted.shift_prior_, "scales", {category: 0.7})
    single = next(name for name in split.train if name != "ctrl" and "+" not in name)
    assert fitted._mean_weight(double) == fitted.config.calibrated_flow_mean_weight == 0.0
    start, change, cells = _start_and_cells(fitted, double, 1.0)
    np.testing.assert_allclose(cells.mean(axis=0), start.mean(axis=0), atol=1e-4)
    assert np.abs(change.mean(axis=0)).max() > 1e-3  # the flow would move the mean
    with monkeypatch.context() as patch:
        patch.setattr(fitted, "mean_weight_", 0.5)
        assert fitted._mean_weight(single) == 0.5  # a single's category (1, 0) is never calibrated
        patch.setattr(
            fitted, "config", dataclasses.replace(fitted.config, calibrated_flow_mean_weight=None)
        )
        assert fitted._mean_weight(double) == 0.5
    # Validation judges the weight on the conditions it applies to, not the calibrated double.
    real = {name: dataset.expression(name).mean(axis=0) for name in (single, double)}

    def planted(name, n_cells, generator):
        factor = 4 / 3 if name == single else 50.0
        return np.zeros((4, dataset.n_genes), np.float32), np.tile(real[name] * factor, (4, 1))

    monkeypatch.setattr(fitted, "_flow_change", planted)
    assert fitted._select_mean_weight(dataset, [single, double]) == 0.75
    assert fitted._select_mean_weight(dataset, [double]) == 0.0


def test_mean_weight_survives_save_and_load(fitted, tmp_path):
    fitted_weight = fitted.mean_weight_
    loaded = load_model(fitted.save(tmp_path / "weight.npz"))
    assert loaded.mean_weight_ == fitted_weight


@pytest.mark.parametrize(
    "field", ["flow_mean_weight", "unseen_flow_mean_weight", "calibrated_flow_mean_weight"]
)
def test_mean_weights_must_be_in_unit_interval(field):
    with pytest.raises(ValueError, match=field):
        ScBIGConfig(**{field: 1.5})
