"""Flow matching in latent space (docs/method.md §2.4): matching, OT pairing, velocity field, solvers."""

from perturbflow.models.flow.matching import (
    VelocityModel,
    flow_matching_loss,
    interpolate,
    sample_time,
    target_velocity,
)
from perturbflow.models.flow.ot_pairing import (
    Pairing,
    ot_pair,
    ot_plan,
    random_pair,
    squared_euclidean_cost,
)
from perturbflow.models.flow.solvers import (
    SOLVERS,
    VelocityFn,
    euler_step,
    integrate,
    midpoint_step,
    rk4_step,
)
from perturbflow.models.flow.velocity import TimeEmbedding, VelocityConfig, VelocityField

__all__ = [
    "SOLVERS",
    "Pairing",
    "TimeEmbedding",
    "VelocityConfig",
    "VelocityField",
    "VelocityFn",
    "VelocityModel",
    "euler_step",
    "flow_matching_loss",
    "integrate",
    "interpolate",
    "midpoint_step",
    "ot_pair",
    "ot_plan",
    "random_pair",
    "rk4_step",
    "sample_time",
    "squared_euclidean_cost",
    "target_velocity",
]
