"""Shared fixtures: location of the shared benchmark data (skipped when absent)."""

from pathlib import Path

import pytest

BENCHDATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "benchdata"


@pytest.fixture
def benchdata() -> Path:
    if not BENCHDATA.is_dir():
        pytest.skip(f"shared benchmark data not found at {BENCHDATA}")
    return BENCHDATA
