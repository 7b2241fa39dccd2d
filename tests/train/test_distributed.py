"""Distributed settings reach Lightning without launching processes; the real 2-process DDP run
against single-process training is benchmarks/ddp.py."""

import pytest
from _scripts import load_script
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities import rank_zero_only

from perturbflow.models.scbig import ScBIGConfig
from perturbflow.train import TrainerSettings, build_trainer, is_global_zero


def test_ddp_settings_build_a_ddp_trainer_over_all_processes():
    settings = TrainerSettings(accelerator="cpu", devices=2, strategy="ddp", num_nodes=3)
    trainer = build_trainer(settings, callbacks=[], folder=None, has_val=False, max_steps=1)
    assert isinstance(trainer.strategy, DDPStrategy)
    assert (trainer.num_devices, trainer.num_nodes, trainer.world_size) == (2, 3, 6)
    # Each rank draws its own batches from the step number: no sampler splits the step counter.
    assert trainer._accelerator_connector.use_distributed_sampler is False


def test_single_process_default_is_not_distributed():
    trainer = build_trainer(
        TrainerSettings(accelerator="cpu", devices=1), callbacks=[], folder=None, has_val=False
    )
    assert not isinstance(trainer.strategy, DDPStrategy)
    assert trainer.world_size == 1


@pytest.mark.parametrize("field", ["devices", "num_nodes"])
def test_device_and_node_counts_must_be_positive(field):
    with pytest.raises(ValueError, match=field):
        TrainerSettings(**{field: 0})
    with pytest.raises(ValueError, match=field):
        ScBIGConfig(**{field: 0})


def test_only_rank_zero_writes(monkeypatch):
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    assert not is_global_zero()
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    assert is_global_zero()


def test_cli_num_nodes_reaches_the_scbig_config():
    from perturbflow.cli import _model_runs

    (spec,) = _model_runs("scbig", defaults={"num_nodes": 2, "strategy": "ddp", "devices": 4})
    config = spec.config(0)
    assert (config.num_nodes, config.strategy, config.devices) == (2, "ddp", 4)


def test_ddp_benchmark_compares_equal_global_batches():
    # Each rank draws its own batch of conditions: the DDP runs draw the single runs' batch split
    # over the ranks, so a step averages as many conditions in both; nothing else differs.
    ddp = load_script("ddp")
    single, distributed = ddp.run_options("single"), ddp.run_options("ddp")
    assert (single["devices"], distributed["devices"]) == (1, 2)
    per_rank = distributed["flow_conditions_per_batch"]
    assert per_rank * distributed["devices"] == single["flow_conditions_per_batch"]
    differ = {"devices", "strategy", "flow_conditions_per_batch"}
    assert {k: v for k, v in distributed.items() if k not in differ} == {
        k: v for k, v in single.items() if k not in differ
    }
