"""Baselines every benchmark must include (docs/method.md §3), behind the one model interface."""

from perturbflow.models.baselines.calibrated import (
    AdditiveShiftPrior,
    CalibratedAdditive,
    CalibratedAdditiveConfig,
    NetworkAdditive,
    NetworkAdditiveConfig,
)
from perturbflow.models.baselines.combinator import Combinator, CombinatorConfig
from perturbflow.models.baselines.embedding import (
    EmbeddingConfig,
    MissingEmbeddingError,
    NearestNeighbor,
    Ridge,
)
from perturbflow.models.baselines.linear import Linear, LinearConfig
from perturbflow.models.baselines.mean_shift import MeanShiftConfig, MeanShiftModel
from perturbflow.models.baselines.pooled import PooledAdditive, PooledAdditiveConfig
from perturbflow.models.baselines.simple import Additive, ControlMean

BASELINES = (
    "control_mean",
    "additive",
    "calibrated_additive",
    "linear",
    "ridge",
    "nearest_neighbor",
    "combinator",
    "network_additive",
    "pooled_additive",
)

__all__ = [
    "BASELINES",
    "Additive",
    "AdditiveShiftPrior",
    "CalibratedAdditive",
    "CalibratedAdditiveConfig",
    "Combinator",
    "CombinatorConfig",
    "ControlMean",
    "EmbeddingConfig",
    "Linear",
    "LinearConfig",
    "MeanShiftConfig",
    "MeanShiftModel",
    "MissingEmbeddingError",
    "NearestNeighbor",
    "NetworkAdditive",
    "NetworkAdditiveConfig",
    "PooledAdditive",
    "PooledAdditiveConfig",
    "Ridge",
]
