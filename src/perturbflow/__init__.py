"""perturbflow: predict single-cell responses to genetic perturbations."""

__version__ = "0.1.0"
