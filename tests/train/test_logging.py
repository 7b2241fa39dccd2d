"""Lightning's INFO chatter (device summary, tips) is silenced unless perturbflow logs at DEBUG."""

from __future__ import annotations

import logging

import pytest
from _objectives import Quadratic

from perturbflow.train import TrainerSettings, fit_objective


@pytest.mark.parametrize("level", [logging.INFO, logging.DEBUG], ids=["info", "verbose"])
def test_lightning_info_messages_show_only_when_verbose(level, caplog):
    settings = TrainerSettings(accelerator="cpu", devices=1, progress=True)
    # As Lightning leaves it on import (the CLI's start-up lowers it; Lightning's import resets it).
    caplog.set_level(logging.INFO, logger="lightning.pytorch")
    before = logging.getLogger("lightning.pytorch").level
    with caplog.at_level(level):  # the root level, as the CLI's --verbose sets it
        fit_objective(Quadratic(), settings, stage="s", lr=0.1, seed=0, has_val=False, max_steps=2)
    lightning = [r for r in caplog.records if r.name.startswith("lightning")]
    info = [r for r in lightning if r.levelno == logging.INFO]
    if level == logging.INFO:
        assert info == []
    else:
        assert any("GPU available" in r.getMessage() for r in info)
    # Back to what it was: the rest of the process is unaffected.
    assert logging.getLogger("lightning.pytorch").level == before
