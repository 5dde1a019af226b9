"""Shared fixtures: where the real data lives, and a scratch folder per test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
REAL_DATA = Path(os.environ.get("TISSUE_ORACLE_REAL_DATA", ROOT.parent / "shared" / "data" / "real"))


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The shared real slides and images; the test skips when they are absent."""
    if not REAL_DATA.is_dir():
        pytest.skip(f"real data folder {str(REAL_DATA)!r} is absent")
    return REAL_DATA
