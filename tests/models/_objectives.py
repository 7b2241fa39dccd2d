"""The smallest training objective, shared by the trainer tests (tests/train, tests/reliability)."""

import torch
from torch import nn


class Quadratic(nn.Module):
    """Pull a vector towards zero, two steps per epoch."""

    steps_per_epoch = 2

    def __init__(self) -> None:
        super().__init__()
        self.weights = nn.Parameter(torch.ones(4))

    def trainable(self) -> nn.Module:
        return self

    def training_loss(self, step, epoch, batch_index, rank, device, log):
        return (self.weights**2).sum()

    def validation_loss(self, device):
        return (self.weights**2).sum()
