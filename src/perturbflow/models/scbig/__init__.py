"""scBIG-style module-inductive flow matching (docs/method.md §2), registered as ``scbig``."""

from perturbflow.models.scbig.config import ScBIGConfig
from perturbflow.models.scbig.model import ScBIG

__all__ = ["ScBIG", "ScBIGConfig"]
