"""Pieces of user-facing messages shared by the modules that validate input."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["preview"]


def preview(items: Iterable[object], limit: int = 8) -> str:
    """The first ``limit`` items, comma-separated, and how many more there are."""
    items = [str(item) for item in items]
    shown = ", ".join(items[:limit])
    return shown + (f", … ({len(items) - limit} more)" if len(items) > limit else "")
