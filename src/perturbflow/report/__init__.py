"""Figures (returned, never shown) and reports."""

from perturbflow.report.figures import metric_bars

__all__ = ["metric_bars"]
