"""Where the captured test vectors are: ../shared/vectors beside the checkout (CI lays a copy
there too). Tests that need them fail loudly when they are missing: they are not optional."""

from __future__ import annotations

from pathlib import Path

__all__ = ["VECTORS"]

VECTORS = Path(__file__).resolve().parents[3] / "shared" / "vectors"
if not VECTORS.is_dir():
    VECTORS = Path("/work/shared/vectors")
