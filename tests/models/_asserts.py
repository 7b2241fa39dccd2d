"""Assertions shared by the model tests."""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree


def assert_stored_cells_plus_one_offset(cells: np.ndarray, stored: np.ndarray) -> None:
    """Every row of ``cells`` ``(n, G)`` is a row of ``stored`` ``(S, G)`` plus one shared vector."""
    tree = cKDTree(stored)
    for candidate in stored:  # the offset that maps this stored cell onto the first cell
        offset = cells[0] - candidate  # (G,)
        distance, _ = tree.query(cells - offset, p=np.inf)  # (n,)
        if distance.max() < 1e-4:
            return
    raise AssertionError("predicted cells are not stored control cells moved by one offset")
