"""Training infrastructure shared by every trained model: the step plan, the trainer, checkpoints.

A model states *what* is optimised as an :class:`Objective` (its loss on a step, its validation
loss, its trainable parameters); :func:`fit_objective` runs it under Lightning with early stopping,
resumable checkpoints and quiet logging. Nothing here knows about a particular model.
"""

from perturbflow.train.plan import Objective, StepPlan, step_generator
from perturbflow.train.trainer import (
    TrainerSettings,
    TrainingInterrupted,
    build_trainer,
    fit_objective,
    is_global_zero,
    quiet_lightning,
)

__all__ = [
    "Objective",
    "StepPlan",
    "TrainerSettings",
    "TrainingInterrupted",
    "build_trainer",
    "fit_objective",
    "is_global_zero",
    "quiet_lightning",
    "step_generator",
]
