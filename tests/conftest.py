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


@pytest.fixture(autouse=True)
def _own_cache_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Probe results are cached per user; tests never read or write the user's cache."""
    monkeypatch.setenv("TISSUE_ORACLE_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
