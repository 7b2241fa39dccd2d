"""Data layer: reading and validating Perturb-seq data, conditions, splits, simulation."""

from perturbflow.data.conditions import (
    CONTROL,
    CONTROL_NAME,
    ConditionError,
    ConditionParser,
    canonical,
    format_condition,
    parse_condition,
)
from perturbflow.data.io import (
    CONDITION_COLUMN,
    DataFileNotFoundError,
    DataValidationError,
    PerturbationDataset,
    SmallConditionWarning,
    read,
)

__all__ = [
    "CONDITION_COLUMN",
    "CONTROL",
    "CONTROL_NAME",
    "ConditionError",
    "ConditionParser",
    "DataFileNotFoundError",
    "DataValidationError",
    "PerturbationDataset",
    "SmallConditionWarning",
    "canonical",
    "format_condition",
    "parse_condition",
    "read",
]
