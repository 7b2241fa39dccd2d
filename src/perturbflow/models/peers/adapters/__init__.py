"""Adapter scripts run by peer environments' Python (``envs.run_adapter``), one per peer.

Each imports only its peer's packages and numpy/pandas/anndata, never perturbflow: a peer's
environment does not hold perturbflow.
"""
