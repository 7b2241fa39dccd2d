"""docs/reliability.md lists every reliability test once, and every row names a real test."""

from __future__ import annotations

import ast
import re
from pathlib import Path

HERE = Path(__file__).parent
TABLE = HERE.parents[1] / "docs" / "reliability.md"


def _tests_here() -> set[str]:
    names = set()
    for path in sorted(HERE.glob("test_*.py")):
        if path.name == Path(__file__).name:
            continue
        tree = ast.parse(path.read_text())
        names |= {
            f"tests/reliability/{path.name}::{node.name}"
            for node in tree.body
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
        }
    return names


def test_the_reliability_table_lists_every_test_once_and_nothing_else():
    rows = re.findall(
        r"^\|\s*(\d+)\s*\|.*`(tests/reliability/[^`]+::\w+)`", TABLE.read_text(), re.M
    )
    listed = [test for _, test in rows]
    assert len(listed) == len(set(listed)), "a test is listed twice"
    assert [int(number) for number, _ in rows] == list(range(1, len(rows) + 1))
    assert set(listed) == _tests_here()
    assert len(listed) >= 30  # the floor of named cases
