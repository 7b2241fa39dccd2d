"""scbig: the composed model behind the one interface, on a tiny simulated screen."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from _asserts import assert_stored_cells_plus_one_offset
from _configs import TINY_SCBIG
from _planted import network_screen
from sklearn.metrics import adjusted_rand_score

from perturbflow.data.io import CONDITION_COLUMN
from perturbflow.eval.metrics import energy_distance
from perturbflow.models import MODELS, get_model, load_model
from perturbflow.models.autoencoders import MLPAutoencoder
from perturbflow.models.condition_encoder import UnknownGeneError
from perturbflow.models.gcae import GCAE, ModuleInducedAttentionBlock
from perturbflow.models.scbig import ScBIG, ScBIGConfig, objectives
from perturbflow.models.scbig.config import SHAPE_WEIGHT_GRID
from perturbflow.models.scbig.model import (
    _CellPools,
    _condition_rows,
    _control_projection,
    _energy_distance,
)
from perturbflow.models.scbig.modules import (
    Centred,
    ConditionModel,
    PCAAutoencoder,
    pooled_program_deltas,
)
from perturbflow.programs.grc import random_programs

TINY = TINY_SCBIG


# A quick fit: an untrained autoencoder, two flow steps, a fixed mean weight (no cross-validation
# flow). Enough to show where a setting goes; not to judge accuracy.
QUICK = dataclasses.replace(TINY, flow_steps=2, ae_epochs=0, mean_weight=0.5, shape_weight=1.0)


@pytest.fixture(scope="module")
def data(screen_data):
    return screen_data("tiny")


@pytest.fixture(scope="module")
def fitted(data):
    dataset, split = data
    return ScBIG(TINY).fit(dataset, split)


@pytest.fixture(scope="module")
def module_fixture_threads():
    return torch.get_num_threads()


def test_module_scoped_fixtures_run_on_one_thread(module_fixture_threads):
    # tests/conftest.py sets one torch thread before each test's set-up, module fixtures included
    # (a fit in a module fixture on all cores of a busy machine took ten times as long).
    assert module_fixture_threads == 1


def _recorded(function, calls: list):
    """``function`` that also appends ``(args, kwargs, result)`` of every call to ``calls``."""

    def spy(*args, **kwargs):
        result = function(*args, **kwargs)
        calls.append((args, kwargs, result))
        return result

    return spy


# Functions whose calls a quick fit records, and where the fit looks them up.
RECORDED = {
    "ot_pair": objectives,
    "random_pair": objectives,
    "cluster_correlation_loss": objectives,
    "pathway_ot_loss": objectives,
    "_alignment_loss": objectives.FlowObjective,
    "encode": ConditionModel,
    "_delta_features": ScBIG,
}


@pytest.fixture(scope="module")
def quick_fit(data):
    """Factory ``(**settings) -> (model, calls)``: ``QUICK`` with ``settings`` fitted once per
    settings in this file, with the calls it made to the flow's pairing, alignment and condition
    encoding recorded (``calls[name]``: ``(args, kwargs, result)`` per call)."""
    dataset, split = data
    fits = {}

    def fit(**settings):
        key = repr(sorted(settings.items()))
        if key not in fits:
            calls = {name: [] for name in RECORDED}
            with pytest.MonkeyPatch.context() as patch:
                for name, owner in RECORDED.items():
                    patch.setattr(owner, name, _recorded(getattr(owner, name), calls[name]))
                model = ScBIG(dataclasses.replace(QUICK, **settings)).fit(dataset, split)
            fits[key] = (model, calls)
        return fits[key]

    return fit


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
    assert loaded.shape_weights_ == fitted.shape_weights_
    assert loaded.shape_weight_cv_ == fitted.shape_weight_cv_
    assert loaded.combinator_weights_ == fitted.combinator_weights_
    assert loaded.combinator_weight_cv_ == fitted.combinator_weight_cv_
    doubles = [name for name in split.test if "+" in name]
    np.testing.assert_allclose(  # the combinator the start blends in
        loaded.start_.combinator.shifts(doubles), fitted.start_.combinator.shifts(doubles)
    )
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


@pytest.mark.parametrize(
    ("network_prior", "cross_fit", "start", "blend"),
    [
        (False, False, "calibrated_additive", 0.0),
        (True, False, "network_additive", 0.0),
        # Cross-fitting moves the training conditions' starts only, never a prediction's.
        (True, True, "network_additive", 0.0),
        # Combinations start a third of the way to the combinator's means.
        (True, False, "network_additive", 1 / 3),
    ],
)
def test_zero_velocity_predicts_the_start_models_means(
    data, network_prior, cross_fit, start, blend
):
    # The network case on a planted screen whose doubles the map does change.
    dataset, split = network_screen()[::2] if network_prior else data
    # The flow's mean, all of it (mean weight 1); the untrained autoencoder cancels out of the
    # residual decoding.
    config = dataclasses.replace(
        QUICK,
        mean_weight=1.0,
        network_prior=network_prior,
        cross_fit_start=cross_fit,
        combinator_weight=blend,
    )
    model = ScBIG(config).fit(dataset, split)
    with torch.no_grad():
        model.velocity_.output.weight.zero_()
        model.velocity_.output.bias.zero_()
    assert set(model.mean_weights_.values()) == {1.0}
    network = model.start_.additive.estimator_.network
    assert (network is not None and network.penalty is not None) == network_prior
    baseline = get_model(start).fit(dataset, split)
    test = list(split.test)
    expected = baseline.predict_delta(test).astype(np.float64)
    assert np.abs(expected.to_numpy()).max() > 0.1  # the start is not trivially zero
    if blend:
        combined = get_model("combinator").fit(dataset, split).predict_delta(test)
        doubles = [name for name in test if "+" in name]
        assert doubles and np.abs(combined.loc[doubles] - expected.loc[doubles]).max().max() > 0.1
        expected.loc[doubles] += blend * (combined.loc[doubles] - expected.loc[doubles])
    predicted = model.predict_delta(test, n_cells=37, seed=4)
    np.testing.assert_allclose(predicted.to_numpy(), expected.to_numpy(), atol=2e-5)


def test_predict_delta_and_uncertainty(fitted, data):
    _, split = data
    test = list(split.test)[:3]
    delta = fitted.predict_delta(test, n_cells=50)
    spread = fitted.predict_uncertainty(test, n_seeds=3, n_cells=20)
    assert delta.shape == spread.shape == (3, fitted.genes_.size)
    assert (spread.to_numpy() >= 0).all() and spread.to_numpy().sum() > 0


def test_unknown_gene_is_an_error_not_a_zero_vector(quick_fit):
    model, _ = quick_fit(missing_gene="error")
    with pytest.raises(UnknownGeneError, match="NOTAGENE"):
        model.predict(["NOTAGENE"], n_cells=2)


def test_invalid_config_names_the_field():
    with pytest.raises(ValueError, match="autoencoder"):
        ScBIGConfig(autoencoder="vae")
    with pytest.raises(ValueError, match="flow_steps"):
        ScBIGConfig(flow_steps=0)


def test_interrupted_training_resumes_to_the_same_result(data, tmp_path, monkeypatch):
    dataset, split = data
    config = dataclasses.replace(TINY, flow_steps=12, val_every=4, alignment=False, ae_epochs=1)
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


def _start_and_cells(model, name, weight, monkeypatch, n_cells=40, shape=1.0):
    """Start cells, the flow's change and predicted cells for one fixed draw, at mean weight
    ``weight`` and shape weight ``shape``."""
    with monkeypatch.context() as patch:
        patch.setattr(model, "_mean_weight", lambda _: weight)
        patch.setattr(model, "_shape_weight", lambda _: shape)
        parts = (model.start_, model.condition_model_, model.velocity_)
        start, change = model._flow_change(name, n_cells, np.random.default_rng(5), *parts)
        cells = np.asarray(model.predict([name], n_cells=n_cells, seed=5).X)  # the same draw
    return start, change, cells


def test_mean_and_shape_weights_scale_the_mean_change_and_the_reshaping(fitted, data, monkeypatch):
    _, split = data
    seen = next(name for name in split.train if name != "ctrl" and len(name.split("+")) == 1)
    start, change, kept = _start_and_cells(fitted, seen, 1.0, monkeypatch)
    np.testing.assert_allclose(kept, start + change, atol=1e-5)
    start, change, shaped = _start_and_cells(fitted, seen, 0.0, monkeypatch)
    # Mean weight 0: the start's mean, with the flow's reshaping around it.
    np.testing.assert_allclose(shaped.mean(axis=0), start.mean(axis=0), atol=1e-4)
    np.testing.assert_allclose(
        shaped - shaped.mean(axis=0), (start + change) - (start + change).mean(axis=0), atol=1e-4
    )
    # Shape weight 0: the start's cells moved by the flow's mean change only.
    start, change, moved = _start_and_cells(fitted, seen, 1.0, monkeypatch, shape=0.0)
    np.testing.assert_allclose(moved, start + change.mean(axis=0), atol=1e-5)
    _, _, half = _start_and_cells(fitted, seen, 0.5, monkeypatch, shape=0.5)
    expected = start + 0.5 * change
    np.testing.assert_allclose(half, expected, atol=1e-5)
    # The flow reshapes the cells by far more than the tolerance above, so the test can fail.
    assert np.abs(change - change.mean(axis=0)).max() > 1e-4


def test_energy_and_projection_match_the_evaluation():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 6)), rng.normal(0.5, 2.0, size=(20, 6))
    assert _energy_distance(x, y) == pytest.approx(energy_distance(x, y), rel=1e-12)
    control = rng.normal(size=(40, 6)) @ np.diag([5.0, 3.0, 1.0, 0.1, 0.1, 0.1])
    centre = control.mean(axis=0)
    project = _control_projection(control, centre, 3)
    coordinates = project(control)  # (40, 3)
    assert coordinates.shape == (40, 3)
    np.testing.assert_allclose(coordinates.mean(axis=0), 0.0, atol=1e-12)
    # The top 3 components keep the variance of the 3 large axes.
    kept = coordinates.var(axis=0).sum() / (control - centre).var(axis=0).sum()
    assert kept > 0.99


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


def _planted_cv(data, monkeypatch, **options):
    """A model whose cross-validation flow is planted: held-out singles start at 0 and their
    change overshoots the real mean by 4/3 (best mean weight 0.75) and reshapes the cells exactly
    as the real ones (best shape weight 1); combinations start short of their real mean by half
    the way to the combinator's (best combinator share 0.5), so that blended they start at their
    real mean, and their change points the wrong way (best mean weight 0) and spreads the cells 4
    times too wide (best shape weight 0.25)."""
    dataset, split = data
    config = dataclasses.replace(TINY, cv_hidden_genes=0.25, cv_doubles=0.5, **options)
    model = ScBIG(config)
    train = [name for name in split.train if name != "ctrl"]
    _, held = model._cv_fold(train)
    real = {name: dataset.expression(name) for name in held}  # name -> (n_c, G)

    def fake_train_flow(start, inner, val, data, folder, stage):
        assert stage == "flow_cv" and not set(inner) & set(held)
        assert not start.seen & {name for name in held if "+" not in name}  # hidden genes
        return None, None

    def planted(name, n_cells, generator, start, condition_model, velocity):
        cells = real[name][np.random.default_rng(0).choice(len(real[name]), n_cells)]  # (n, G)
        spread = (cells - cells.mean(axis=0)).astype(np.float64)  # (n, G), mean 0
        mean = real[name].mean(axis=0)  # (G,)
        if "+" not in name:
            return np.zeros_like(spread), mean * 4 / 3 + spread
        short = mean - 0.5 * start.combinator_offset(name)  # (G,)
        return np.tile(short, (n_cells, 1)), -3.0 * mean + 4.0 * spread

    monkeypatch.setattr(model, "_train_flow", fake_train_flow)
    monkeypatch.setattr(model, "_flow_change", planted)
    model.genes_ = dataset.genes
    model.control_cells_ = dataset.control_expression()
    model.control_mean_ = model.control_cells_.mean(axis=0)
    rows = _condition_rows(dataset, train)
    pools = _CellPools(dataset.adata.X, rows, rows)
    return model, model._choose_weights(dataset, train, [], pools, None)


def test_mean_and_shape_weights_are_chosen_per_kind_on_held_out_training_conditions(
    data, monkeypatch
):
    model, (mean, shape, blend) = _planted_cv(data, monkeypatch, cv_min_conditions=2)
    counts = {kind: row["n_conditions"] for kind, row in model.mean_weight_cv_.items()}
    assert counts["unseen_single"] >= 2 and any(k.startswith("combo") for k in counts)
    assert mean["unseen_single"] == 0.75 and shape["unseen_single"] == 1.0
    assert mean["seen_single"] == 0.0  # no held-out condition can judge it
    assert blend["unseen_single"] == blend["seen_single"] == 0.0  # singles: no combinator
    judged = [kind for kind in counts if kind.startswith("combo") and counts[kind] >= 2]
    assert judged
    for kind in judged:
        assert blend[kind] == 0.5
        assert min(model.combinator_weight_cv_[kind]["mse"].values()) < 1e-8  # float32 cells
        assert mean[kind] == 0.0 and shape[kind] == 0.25
        assert model.combinator_weight_cv_[kind]["n_conditions"] == counts[kind]
    # seen_single has no held-out condition: it takes the choice pooled over all of them, by the
    # pooled energies on control PCs and on genes, each relative to its value at scale 1.
    report = model.shape_weight_cv_
    total = sum(counts.values())

    def pooled(space, weight):
        return sum(report[k]["n_conditions"] * report[k][space][f"{weight:g}"] for k in counts)

    score = {
        w: pooled("energy", w) / pooled("energy", 1.0)
        + pooled("energy_genes", w) / pooled("energy_genes", 1.0)
        for w in SHAPE_WEIGHT_GRID
    }
    assert report["pooled"]["n_conditions"] == total
    assert shape["seen_single"] == report["pooled"]["weight"] == min(score, key=score.get)
    for kind in counts:  # each kind's own score: both energies relative to scale 1, summed
        row = report[kind]
        for w in SHAPE_WEIGHT_GRID:
            expected = row["energy"][f"{w:g}"] / row["energy"]["1"]
            expected += row["energy_genes"][f"{w:g}"] / row["energy_genes"]["1"]
            assert row["score"][f"{w:g}"] == pytest.approx(expected)


def test_with_too_few_held_out_conditions_the_start_s_cells_are_kept(data, monkeypatch):
    model, (mean, shape, blend) = _planted_cv(data, monkeypatch, cv_min_conditions=1000)
    assert set(mean.values()) == set(shape.values()) == {0.0}
    assert set(blend.values()) == {0.0}
    assert model.shape_weight_cv_["unseen_single"]["n_conditions"] >= 2  # measured, not used


def test_fixed_weights_skip_the_fold(data):
    dataset, split = data
    train = [name for name in split.train if name != "ctrl"]
    fixed = ScBIG(
        dataclasses.replace(
            TINY,
            mean_weight=0.3,
            shape_weight=0.6,
            combinator_weight=0.25,
        )
    )
    mean, shape, blend = fixed._choose_weights(dataset, train, [], None, None)
    assert set(mean.values()) == {0.3} and set(shape.values()) == {0.6}
    assert blend["combo_seen2"] == blend["combo_seen0"] == 0.25 and blend["unseen_single"] == 0.0
    other_start = ScBIG(dataclasses.replace(TINY, start="control", mean_weight=0, shape_weight=1))
    assert set(other_start._choose_weights(dataset, train, [], None, None)[2].values()) == {0.0}


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


@pytest.mark.parametrize(
    ("field", "value"),
    [("mean_weight", 1.5), ("shape_weight", -0.5), ("shape_weight", float("nan"))]
    + [("cv_hidden_genes", 1.5), ("cv_doubles", 1.5)]
    + [("combinator_weight", 1.5), ("combinator_weight", -0.1)],
)
def test_mean_weight_settings_are_checked(field, value):
    with pytest.raises(ValueError, match=field):
        ScBIGConfig(**{field: value})


def test_a_combinator_share_needs_the_calibrated_start():
    with pytest.raises(ValueError, match="combinator_weight.*start='control'"):
        ScBIGConfig(start="control", combinator_weight=0.5)
    assert ScBIGConfig(start="combinator", combinator_weight=0.0).combinator_weight == 0.0


# --- ablation switches: each reaches the module it names ---------------------------------------


def test_random_programs_replace_grc_and_reorder_the_gcae(quick_fit, data):
    dataset, _ = data
    grc, _ = quick_fit()
    ablated, _ = quick_fit(programs="random")
    planted = dataset.adata.var["program"].to_numpy()
    grc_labels = grc.programs_["program"].to_numpy()
    random_labels = ablated.programs_["program"].to_numpy()
    # The ablation's programs are the seeded balanced random draw, not GRC's recovered programs.
    expected = random_programs(dataset.genes, 4, seed=QUICK.seed)
    np.testing.assert_array_equal(random_labels, expected.labels)
    # GRC finds the planted programs in part (ARI 0.55 here); the random draw does not (0.05).
    assert adjusted_rand_score(planted, grc_labels) > 0.4
    assert adjusted_rand_score(planted, random_labels) < 0.15
    assert adjusted_rand_score(grc_labels, random_labels) < 0.15
    # The GCAE reads genes in the order of the programs it was given.
    for model in (grc, ablated):
        np.testing.assert_array_equal(
            model.autoencoder_.inner.gene_order.numpy(), model._programs.order
        )
    assert not np.array_equal(grc._programs.order, ablated._programs.order)


def test_without_ot_pairing_the_flow_pairs_cells_at_random(quick_fit):
    _, with_ot = quick_fit()
    _, without = quick_fit(ot_pairing=False)
    assert with_ot["ot_pair"] and not with_ot["random_pair"]
    assert without["random_pair"] and not without["ot_pair"]
    # Step 0 draws the same source and target cells either way; only the pairing differs.
    (sources, targets), _, ot_pairs = with_ot["ot_pair"][0]
    (same_sources, same_targets), _, random_pairs = without["random_pair"][0]
    torch.testing.assert_close(same_sources, sources)
    torch.testing.assert_close(same_targets, targets)

    def cost(pairs):
        return float(((pairs.x0 - pairs.x1) ** 2).sum())

    assert cost(ot_pairs) < 0.9 * cost(random_pairs)


def test_without_alignment_the_alignment_losses_are_never_computed(quick_fit):
    _, aligned = quick_fit()
    _, plain = quick_fit(alignment=False)
    for name in ("_alignment_loss", "cluster_correlation_loss", "pathway_ot_loss"):
        assert aligned[name], f"{name} is computed with alignment on"
        assert not plain[name], f"{name} is computed with alignment off"
    assert all(float(result.detach()) > 0 for *_, result in aligned["_alignment_loss"])


def test_autoencoder_setting_builds_the_named_autoencoder(quick_fit, data):
    dataset, split = data
    gcae, _ = quick_fit()
    mlp, _ = quick_fit(autoencoder="mlp", ae_epochs=1)
    pca, _ = quick_fit(autoencoder="pca")

    def attention_blocks(model):
        return [
            m for m in model.autoencoder_.modules() if isinstance(m, ModuleInducedAttentionBlock)
        ]

    assert isinstance(gcae.autoencoder_, Centred) and isinstance(gcae.autoencoder_.inner, GCAE)
    assert len(attention_blocks(gcae)) == 2 * QUICK.n_blocks  # encoder and decoder
    # "mlp": the plain MLP autoencoder, no module attention; the flow's latents are its codes.
    assert isinstance(mlp.autoencoder_, Centred)
    assert isinstance(mlp.autoencoder_.inner, MLPAutoencoder) and not attention_blocks(mlp)
    assert np.isfinite(mlp.history_["autoencoder_best_val"])  # the stage-1 training trained it
    cells = dataset.control_expression()[:20]
    with torch.no_grad():
        codes = mlp.autoencoder_.inner.encode(torch.from_numpy(cells) - mlp.autoencoder_.gene_mean)
    torch.testing.assert_close(mlp._encode(cells), codes)
    # "pca": the fixed linear map onto the training cells' top principal components.
    assert isinstance(pca.autoencoder_, PCAAutoencoder) and not attention_blocks(pca)
    train = [name for name in split.train if name != "ctrl"]
    train_cells = dataset.expression(["ctrl", *train]).astype(np.float64)  # (N, G)
    centred = train_cells - train_cells.mean(axis=0)
    top = np.linalg.svd(centred, full_matrices=False)[2][: QUICK.latent_dim]  # (L, G)
    components = pca.autoencoder_.components.numpy().astype(np.float64)  # (L, G)
    np.testing.assert_allclose(components @ components.T, np.eye(QUICK.latent_dim), atol=1e-4)
    np.testing.assert_allclose(components.T @ components, top.T @ top, atol=1e-3)
    np.testing.assert_allclose(pca.autoencoder_.mean.numpy(), train_cells.mean(axis=0), atol=1e-4)


def test_delta_conditioning_off_leaves_the_gene_vectors_only(fitted, quick_fit, data):
    _, split = data
    names = list(split.test)[:3]
    assert fitted.condition_model_.delta_mlp is not None
    with torch.no_grad():
        with_deltas = fitted.condition_model_.encode(names)
        without = fitted.condition_model_.encoder.encode(names)
    assert not torch.allclose(with_deltas, without)  # trained deltas move the embedding
    plain, calls = quick_fit(delta_conditioning=False)
    assert plain.condition_model_.delta_mlp is None
    assert plain.condition_model_.delta_features is None
    assert not calls["_delta_features"]  # the pooled deltas are never even built
    with torch.no_grad():
        torch.testing.assert_close(
            plain.condition_model_.encode(names), plain.condition_model_.encoder.encode(names)
        )
    _, conditioned = quick_fit()
    assert conditioned["_delta_features"]


def test_control_start_has_zero_shifts_and_starts_at_control_cells(quick_fit, data, monkeypatch):
    _, split = data
    test = list(split.test)
    additive, _ = quick_fit()
    control, _ = quick_fit(start="control")
    assert np.abs(additive.start_.shifts(test)).max() > 0.1
    np.testing.assert_array_equal(control.start_.shifts(test), 0.0)
    name = test[0]
    for model, shift in ((control, 0.0), (additive, additive.start_.shifts([name])[0])):
        start, _, _ = _start_and_cells(model, name, 0.0, monkeypatch)
        np.testing.assert_allclose(start.mean(axis=0), model.control_mean_ + shift, atol=1e-4)


def test_uncalibrated_start_sums_the_single_deltas(quick_fit, data):
    _, split = data
    doubles = [name for name in split.test if "+" in name]
    calibrated, _ = quick_fit()
    plain, _ = quick_fit(calibrate_prior=False)
    assert plain.start_.additive.estimator_.scales == {}
    estimator = plain.start_.additive.estimator_
    summed = [sum(estimator.gene_delta(g) for g in name.split("+")) for name in doubles]
    np.testing.assert_allclose(plain.start_.shifts(doubles), np.vstack(summed), atol=1e-6)
    assert set(calibrated.start_.additive.estimator_.scales.values()) - {1.0}
    assert not np.allclose(calibrated.start_.shifts(doubles), plain.start_.shifts(doubles))


def test_target_unaware_start_gives_an_unseen_gene_the_mean_delta(quick_fit, data):
    dataset, split = data
    unseen = next(n for n in split.test if split.subgroups[n] == "unseen_single")
    aware = quick_fit()[0].start_.additive.estimator_
    plain_model, _ = quick_fit(target_aware_prior=False)
    plain = plain_model.start_.additive.estimator_
    assert not plain.target_aware and plain.target_scales == {}
    assert aware.target_aware and aware.target_scales
    np.testing.assert_allclose(plain.gene_delta(unseen), plain.mean_delta, atol=1e-6)
    np.testing.assert_allclose(
        plain_model.start_.shifts([unseen])[0], plain.scale(1, 1) * plain.mean_delta, atol=1e-6
    )
    # Target-aware: the same mean delta, plus the on-target residual in the gene's own column,
    # spread to the genes that co-vary with it (propagate_prior, the default).
    own = list(dataset.genes).index(unseen)
    others = np.arange(dataset.n_genes) != own
    delta = aware.gene_delta(unseen)
    residual = delta[own] - aware.mean_delta[own]
    assert abs(residual) > 0.05
    slopes = aware.coupling[unseen]
    assert slopes[own] == 0.0 and np.abs(slopes).max() > 0
    np.testing.assert_allclose(
        delta[others], aware.mean_delta[others] + residual * slopes[others], atol=1e-5
    )


def test_unseen_rate_presents_training_conditions_with_a_hidden_gene(quick_fit):
    def training_views(calls):
        # Training encodes pass ``hidden``; validation encodes do not.
        return [
            (name, hide)
            for (_, names), kwargs, _ in calls["encode"]
            if kwargs.get("hidden") is not None
            for name, hide in zip(names, kwargs["hidden"], strict=True)
        ]

    _, never = quick_fit()
    _, always = quick_fit(unseen_rate=1.0)
    assert training_views(never) and all(not hide for _, hide in training_views(never))
    views = training_views(always)
    assert views
    for name, hide in views:
        assert len(hide) == 1 and hide <= set(name.split("+")), (name, hide)


@pytest.mark.parametrize(
    "settings",
    [
        {"programs": "random"},
        {"autoencoder": "mlp", "ae_epochs": 1},
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
    ids=lambda settings: ",".join(f"{k}={v}" for k, v in settings.items()),
)
def test_every_ablation_predicts(quick_fit, data, settings):
    # The fits above, reused: each variant's prediction path (its decoder, its start) runs too.
    _, split = data
    model, _ = quick_fit(**settings)
    cells = model.predict(["ctrl", *list(split.test)[:2]], n_cells=3)
    assert cells.n_obs == 9 and np.isfinite(cells.X).all()
    delta = model.predict_delta(list(split.test)[:2], n_cells=20)
    assert np.isfinite(delta.to_numpy()).all() and np.abs(delta.to_numpy()).max() > 0


def test_combinator_start_round_trips_and_shifts_by_the_combinator(quick_fit, data, tmp_path):
    dataset, split = data
    model, _ = quick_fit(start="combinator")
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


def test_default_components_are_the_measured_ones(data):
    # docs/method.md §7: PCA latent, no alignment losses, no OT pairing; GRC programs kept.
    config = ScBIGConfig()
    assert (config.autoencoder, config.alignment, config.ot_pairing, config.programs) == (
        "pca",
        False,
        False,
        "grc",
    )
    dataset, split = data
    default_parts = dataclasses.replace(TINY, autoencoder="pca", alignment=False, ot_pairing=False)
    model = ScBIG(default_parts).fit(dataset, split)
    assert isinstance(model.autoencoder_, PCAAutoencoder)
    cells = model.predict(split.test, n_cells=20, seed=0)
    assert cells.n_obs == 20 * len(split.test) and np.isfinite(np.asarray(cells.X)).all()


def test_scbig_matches_gene_names_by_letter_case(fitted):
    gene = sorted(set(fitted.seen_genes_) & set(fitted.genes_))[0]
    cells = fitted.predict([gene.lower()], n_cells=5, seed=0)
    assert set(cells.obs[CONDITION_COLUMN].astype(str)) == {gene}


def test_cross_fit_start_moves_training_combinations_to_their_held_out_start():
    dataset, _, split = network_screen()
    model = ScBIG(dataclasses.replace(QUICK, cross_fit_start=True)).fit(dataset, split)
    double = next(name for name in split.train if "+" in name)
    crossed = model.start_.shifts([double], cross_fit=True)
    in_sample = model.start_.shifts([double])
    assert np.abs(crossed - in_sample).max() > 1e-3
    np.testing.assert_array_equal(  # a test double is not a training combination of the map
        model.start_.shifts([split.test[0]], cross_fit=True), model.start_.shifts([split.test[0]])
    )


def test_without_held_out_conditions_the_start_s_cells_are_kept_unless_fixed(data):
    dataset, split = data
    train = [name for name in split.train if name != "ctrl"]
    empty_fold = dict(cv_hidden_genes=0.0, cv_doubles=0.0)
    model = ScBIG(dataclasses.replace(TINY, **empty_fold))
    mean, shape, blend = model._choose_weights(dataset, train, [], None, None)  # no flow fitted
    assert set(mean.values()) == set(shape.values()) == {0.0}
    assert set(blend.values()) == {0.0}
    fixed = ScBIG(dataclasses.replace(TINY, shape_weight=2.0, combinator_weight=0.5, **empty_fold))
    mean, shape, blend = fixed._choose_weights(dataset, train, [], None, None)
    assert set(mean.values()) == {0.0} and set(shape.values()) == {2.0}
    assert blend["combo_seen2"] == 0.5 and blend["seen_single"] == 0.0


def test_combinator_share_is_judged_on_the_top_de_genes_without_the_perturbed_ones():
    # Three held-out doubles whose 20 DE genes (G2..G21) ask for 0.75 of the combinator's offset;
    # their perturbed genes would ask for 0.25 and the unchanged genes for 0: neither counts.
    rng = np.random.default_rng(0)
    n_genes = 30
    model = ScBIG(TINY)
    model.genes_ = pd.Index([f"G{i}" for i in range(n_genes)])
    model.control_cells_ = rng.normal(size=(400, n_genes)).astype(np.float32)
    control_mean = model.control_cells_.mean(axis=0)
    held_out, cells, offsets = {}, {}, {}
    for name, perturbed in (("G0+G1", (0, 1)), ("G0+G22", (0, 22)), ("G1+G23", (1, 23))):
        delta = np.zeros(n_genes)
        delta[2:22] = rng.choice([-1.0, 1.0], 20) * rng.uniform(2.0, 3.0, 20)
        delta[list(perturbed)] = -6.0
        offset = rng.normal(scale=2.0, size=n_genes)  # unchanged genes: any share but 0 hurts
        offset[2:22] = delta[2:22] / 0.75
        offset[list(perturbed)] = delta[list(perturbed)] / 0.25
        offsets[name] = offset
        real = model.control_cells_[rng.choice(400, 300)] + delta  # (300, G)
        cells[name] = torch.as_tensor(real, dtype=torch.float32)
        start_cells = np.tile(control_mean, (50, 1))  # the start's mean: control
        held_out[name] = ("combo_seen2", start_cells, np.zeros_like(start_cells))
    start = SimpleNamespace(combinator_offset=lambda name: offsets[name])
    data = SimpleNamespace(cells=lambda name: cells[name])
    model.combinator_weight_cv_ = {}  # _choose_weights starts each report
    shares = model._cv_combinator_weights(start, held_out, data)
    report = model.combinator_weight_cv_["combo_seen2"]
    assert shares["combo_seen2"] == 0.75 and report["n_conditions"] == 3
    assert min(report["mse"], key=report["mse"].get) == "0.75"
    assert shares["unseen_single"] == shares["combo_seen1"] == 0.0  # nothing held out there
