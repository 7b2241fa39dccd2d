"""Tests of perturbflow.grn (a package: tests/grn/test_metrics.py shares its basename with
tests/eval/test_metrics.py)."""
