"""The Lightning trainer of every stage: devices, early stopping, resumable checkpoints, quiet logs."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import pickle
import tempfile
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from torch import nn

from perturbflow.data.outputs import lock_output_dir, release_output_dir
from perturbflow.train.plan import StepPlan

logger = logging.getLogger(__name__)


class TrainingInterrupted(RuntimeError):
    """Training stopped before the end (Ctrl-C, a killed job); it can resume from checkpoints."""


class ResumeCheckpointError(ValueError):
    """A training checkpoint to resume from is damaged, or holds more than tensors and numbers."""


def check_resume_checkpoint(path: Path) -> None:
    """Raise :class:`ResumeCheckpointError` unless ``path`` loads as tensors and plain values.

    ``weights_only=True``: torch refuses pickled code instead of running it, so a tampered
    checkpoint cannot execute anything.
    """
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, OSError, ValueError) as error:
        raise ResumeCheckpointError(
            f"{path}: cannot resume from this training checkpoint ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}); it is damaged or not written "
            f"by perturbflow. Delete {path.parent} to train this stage from the start"
        ) from error


@dataclasses.dataclass(frozen=True)
class TrainerSettings:
    """Where and how a stage trains.

    accelerator/devices/strategy/num_nodes: passed to ``lightning.Trainer`` (``"cpu"``, ``"gpu"``,
    ``"auto"``; devices per node, a count or ``"auto"``; ``"auto"`` or ``"ddp"``; machines, at least
    1). Under ``"ddp"`` every process runs the whole program and draws its own batches, so a step
    sees ``devices × num_nodes`` batches. patience: validation periods without improvement before
    early stopping. progress: show Lightning's progress bar and INFO lines.
    """

    accelerator: str = "auto"
    devices: int | str = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    patience: int = 5
    progress: bool = False

    def __post_init__(self) -> None:
        if self.num_nodes < 1:
            raise ValueError(f"num_nodes must be at least 1, got {self.num_nodes}")
        if isinstance(self.devices, int) and self.devices < 1:
            raise ValueError(f"devices must be at least 1 or 'auto', got {self.devices}")


def is_global_zero() -> bool:
    """Whether this process is rank 0 of a distributed run (or the only process): the one that
    writes outputs. Lightning sets the rank when a strategy starts; before, it reads ``RANK``,
    ``LOCAL_RANK`` or ``SLURM_PROCID`` from the environment (torchrun, SLURM, DDP workers)."""
    return getattr(rank_zero_only, "rank", 0) == 0


def build_trainer(
    settings: TrainerSettings,
    *,
    callbacks: list,
    folder: Path | None,
    has_val: bool,
    max_steps: int = -1,
    max_epochs: int | None = None,
    grad_clip: float | None = None,
) -> L.Trainer:
    """The ``lightning.Trainer`` of one stage (built quietly by :func:`fit_objective`)."""
    return L.Trainer(
        accelerator=settings.accelerator,
        devices=settings.devices,
        strategy=settings.strategy,
        num_nodes=settings.num_nodes,
        max_steps=max_steps,
        max_epochs=max_epochs,
        gradient_clip_val=grad_clip,
        callbacks=callbacks,
        enable_checkpointing=folder is not None,
        enable_progress_bar=settings.progress,
        enable_model_summary=False,
        logger=False,
        num_sanity_val_steps=0,
        limit_val_batches=1 if has_val else 0,
        # The step loader only counts steps; objectives draw each rank's batch from
        # (seed, step, rank). A distributed sampler would halve each rank's epoch instead.
        use_distributed_sampler=False,
        default_root_dir=str(folder) if folder else tempfile.gettempdir(),
    )


@contextlib.contextmanager
def quiet_lightning(quiet: bool):
    """Silence Lightning's INFO chatter (device summary, tips) while training; Lightning resets
    its logger levels on import, so this is done here."""
    names = ("lightning.pytorch", "lightning.fabric", "pytorch_lightning")
    previous = {name: logging.getLogger(name).level for name in names}
    if quiet:
        for name in names:
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        yield
    finally:
        for name, level in previous.items():
            logging.getLogger(name).setLevel(level)


def fit_objective(
    objective: nn.Module,
    settings: TrainerSettings,
    *,
    stage: str,
    lr: float,
    seed: int,
    has_val: bool,
    folder: Path | None = None,
    max_steps: int = -1,
    max_epochs: int | None = None,
    grad_clip: float | None = None,
    owner: str = "training",
) -> StepPlan:
    """Train ``objective`` and return its plan (``best_val``, ``best_state``, ``steps``).

    With ``folder``, the stage checkpoints into ``folder/stage`` after every validation period and
    a later call with the same folder resumes from ``last.ckpt``: a crash loses at most one
    period, and the replay is exact because batches are drawn from the step number. Raises
    :class:`TrainingInterrupted` when training stopped early (Ctrl-C, a killed worker).
    """
    plan = StepPlan(objective, lr=lr, seed=seed)
    callbacks: list = []
    if has_val:
        callbacks.append(
            EarlyStopping(
                monitor="val_loss",
                patience=settings.patience,
                mode="min",
                check_on_train_epoch_end=False,
            )
        )
    resume = None
    if folder is not None:
        stage_dir = folder / stage
        callbacks.append(
            ModelCheckpoint(
                dirpath=stage_dir,
                filename="latest",
                save_last=True,
                every_n_epochs=1,
                save_top_k=1,  # without a monitor: keep only the most recent
                save_on_train_epoch_end=True,
            )
        )
        last = stage_dir / "last.ckpt"
        resume = str(last) if last.exists() else None
        if resume:
            check_resume_checkpoint(last)
            logger.info("%s: resuming %s from %s", owner, stage, last)
    # Progress bars are a callback, not a log: they show either way. Lightning's own INFO
    # messages (device summary, tips) show with --verbose only.
    verbose = logging.getLogger("perturbflow").isEnabledFor(logging.DEBUG)
    with warnings.catch_warnings(), quiet_lightning(not verbose):
        # Built inside: the Trainer logs its device summary and batch notes on creation.
        trainer = build_trainer(
            settings,
            callbacks=callbacks,
            folder=folder,
            has_val=has_val,
            max_steps=max_steps,
            max_epochs=max_epochs,
            grad_clip=grad_clip,
        )
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*number of training batches.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # inside Lightning
        warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")
        if folder is None:
            trainer.fit(plan)
        else:
            # Two runs training into one checkpoint folder would overwrite each other's
            # checkpoints: the second refuses. The ranks of one distributed run share the folder;
            # rank 0 holds the lock and alone writes checkpoints.
            stage_dir.mkdir(parents=True, exist_ok=True)
            owner_rank = trainer.is_global_zero
            if owner_rank:
                lock_output_dir(stage_dir)
            try:
                trainer.fit(plan, ckpt_path=resume, weights_only=True)
            finally:
                if owner_rank:
                    release_output_dir(stage_dir)
    if trainer.interrupted:
        hint = (
            f"; call fit again with checkpoint_dir={str(folder)!r} to resume"
            if folder is not None
            else "; pass checkpoint_dir to make training resumable"
        )
        raise TrainingInterrupted(f"{owner} {stage} training was interrupted{hint}")
    plan.steps = int(trainer.global_step)
    return plan
