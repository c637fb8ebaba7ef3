"""The suite collects as one: pytest imports test modules by basename (no tests/__init__.py,
see docs/architecture.md), so two test files of one name stop the whole collection."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_no_two_test_modules_share_a_basename() -> None:
    names = Counter(p.name for p in (ROOT / "tests").rglob("test_*.py"))
    assert [n for n, k in names.items() if k > 1] == []
