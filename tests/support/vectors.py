"""Where the captured test vectors are: ``tests/vectors`` in this repository (see its
README.md). Tests that need them fail loudly when they are missing: they are not optional."""

from __future__ import annotations

from pathlib import Path

__all__ = ["VECTORS"]

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
