"""Models behind one interface: ``fit`` / ``predict`` / ``save`` / ``load`` and a registry."""

from perturbflow.models import baselines, peers, scbig  # noqa: F401  (registers the models)
from perturbflow.models.base import MODELS, Model, get_model, load_model, register_model

__all__ = ["MODELS", "Model", "get_model", "load_model", "register_model"]
