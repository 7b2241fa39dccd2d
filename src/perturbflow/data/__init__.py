"""Data layer: reading and validating Perturb-seq data, conditions, splits, contexts, simulation."""

from perturbflow.data.conditions import (
    CONTROL,
    CONTROL_NAME,
    ConditionError,
    ConditionParser,
    canonical,
    format_condition,
    parse_condition,
)
from perturbflow.data.contexts import (
    ContextError,
    CrossCellLineTask,
    centre_by_context,
    cross_cell_line_task,
)
from perturbflow.data.io import (
    CONDITION_COLUMN,
    ControlCompositionWarning,
    DataFileNotFoundError,
    DataValidationError,
    PerturbationDataset,
    ReadOptions,
    SmallConditionWarning,
    match_control_cells,
    read,
)

__all__ = [
    "CONDITION_COLUMN",
    "CONTROL",
    "CONTROL_NAME",
    "ConditionError",
    "ConditionParser",
    "ContextError",
    "ControlCompositionWarning",
    "CrossCellLineTask",
    "DataFileNotFoundError",
    "DataValidationError",
    "PerturbationDataset",
    "ReadOptions",
    "SmallConditionWarning",
    "canonical",
    "centre_by_context",
    "cross_cell_line_task",
    "format_condition",
    "match_control_cells",
    "parse_condition",
    "read",
]
