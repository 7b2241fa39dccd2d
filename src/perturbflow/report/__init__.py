"""Figures (returned, never shown), markdown tables and HTML reports.

Submodules are imported where needed: :mod:`~perturbflow.report.markdown` stays light (pandas
only) for scripts that table results without loading torch.
"""
