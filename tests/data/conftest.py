"""Fixtures for the data-layer tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch) -> Path:
    """An empty tensor cache for one test (the session-wide one is shared by every test)."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("OODBENCH_CACHE", str(folder))
    return folder
