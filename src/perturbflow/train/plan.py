"""One Lightning plan for every objective: seeded steps, validation, best weights, Adam.

Batches are drawn *inside* the training step from generators seeded by ``(seed, step, rank)``, and
the global torch seed is reset from the same numbers before every step (dropout). A run
interrupted and resumed from its Lightning checkpoint therefore replays exactly the batches it
would have seen, and reaches the same weights as an uninterrupted run.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from typing import Protocol

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

#: ``log(name, value, batch_size)``: how an objective reports a scalar of the current step.
LogFn = Callable[[str, torch.Tensor, int], None]

#: DEBUG records ``("train" | "val", step, loss)`` per step and validation: a loss curve for
#: whoever attaches a handler (benchmarks/ddp.py), at no cost otherwise.
logger = logging.getLogger(__name__)


def step_generator(seed: int, step: int, rank: int, stream: int) -> torch.Generator:
    """A generator for one purpose (``stream``) of one step on one process, reproducible."""
    value = (seed * 1_000_003 + step * 7_919 + rank * 104_729 + stream) % (2**63 - 1)
    return torch.Generator().manual_seed(value)


class Objective(Protocol):
    """What a model optimises. Objectives are ``nn.Module``s holding the networks they train.

    ``training_loss`` draws its own batch for ``(step, epoch, batch_index, rank)`` (use
    :func:`step_generator`); ``validation_loss`` scores the held-out data, lower is better.
    """

    steps_per_epoch: int

    def trainable(self) -> nn.Module: ...

    def training_loss(
        self, step: int, epoch: int, batch_index: int, rank: int, device: torch.device, log: LogFn
    ) -> torch.Tensor: ...

    def validation_loss(self, device: torch.device) -> torch.Tensor: ...


class _StepIndices(Dataset):
    """A dataset of step numbers: objectives sample their own batches from the step."""

    def __init__(self, n_steps: int) -> None:
        self.n_steps = n_steps

    def __len__(self) -> int:
        return self.n_steps

    def __getitem__(self, index: int) -> int:
        return index


def _step_loader(n_steps: int) -> DataLoader:
    return DataLoader(_StepIndices(n_steps), batch_size=None, shuffle=False)


class StepPlan(L.LightningModule):
    """Trains ``objective.trainable()`` with Adam and keeps the weights of the lowest
    ``val_loss`` (in memory as ``best_state`` and in checkpoints)."""

    def __init__(self, objective: nn.Module, *, lr: float, seed: int) -> None:
        super().__init__()
        self.objective = objective
        self.lr = lr
        self.seed = seed
        self.best_val = math.inf
        self.best_state: dict[str, torch.Tensor] | None = None

    def train_dataloader(self) -> DataLoader:
        return _step_loader(self.objective.steps_per_epoch)

    def val_dataloader(self) -> DataLoader:
        return _step_loader(1)

    def _log(self, name: str, value: torch.Tensor, batch_size: int) -> None:
        self.log(name, value, prog_bar=True, batch_size=batch_size)

    def training_step(self, batch: int, batch_idx: int) -> torch.Tensor:
        step, rank = self.global_step, self.global_rank
        torch.manual_seed(self.seed + 31 * step + 7 * rank)
        loss = self.objective.training_loss(
            step, self.current_epoch, batch_idx, rank, self.device, self._log
        )
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s step %d: loss %.6g", "train", step, float(loss.detach()))
        return loss

    @torch.no_grad()
    def validation_step(self, batch: int, batch_idx: int) -> None:
        loss = self.objective.validation_loss(self.device)
        # Every rank scores the same held-out data with the same weights; sync_dist only keeps
        # Lightning from warning about an unsynchronised epoch-level value.
        self.log("val_loss", loss, prog_bar=True, batch_size=1, sync_dist=True)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s step %d: loss %.6g", "val", self.global_step, float(loss))
        if float(loss) < self.best_val:
            self.best_val = float(loss)
            self.best_state = copy.deepcopy(self.objective.trainable().state_dict())

    def configure_optimizers(self):
        return torch.optim.Adam(self.objective.trainable().parameters(), lr=self.lr)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["perturbflow_best"] = {"val": self.best_val, "state": self.best_state}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        stored = checkpoint.get("perturbflow_best", {})
        self.best_val = stored.get("val", math.inf)
        self.best_state = stored.get("state")
