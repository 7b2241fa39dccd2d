"""Baselines every benchmark must include (METHOD §3), behind the one model interface."""

from perturbflow.models.baselines.embedding import (
    EmbeddingConfig,
    MissingEmbeddingError,
    NearestNeighbor,
    Ridge,
)
from perturbflow.models.baselines.linear import Linear, LinearConfig
from perturbflow.models.baselines.mean_shift import MeanShiftConfig, MeanShiftModel
from perturbflow.models.baselines.simple import Additive, ControlMean

BASELINES = ("control_mean", "additive", "linear", "ridge", "nearest_neighbor")

__all__ = [
    "BASELINES",
    "Additive",
    "ControlMean",
    "EmbeddingConfig",
    "Linear",
    "LinearConfig",
    "MeanShiftConfig",
    "MeanShiftModel",
    "MissingEmbeddingError",
    "NearestNeighbor",
    "Ridge",
]
