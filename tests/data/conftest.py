"""Fixtures of the kd_compile.data tests: a private, empty glyph cache for every test."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own empty glyph cache (never the user's ~/.cache)."""
    d = tmp_path / "cache"
    monkeypatch.setenv("KD_COMPILE_CACHE", str(d))
    torch.set_num_threads(1)
    return d
