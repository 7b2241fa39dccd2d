"""Suite-wide fixtures."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Downloads and embedding caches go to a temporary folder, never the user's cache."""
    monkeypatch.setenv("PERTURBFLOW_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
