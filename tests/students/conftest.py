"""Fixtures of the student-family tests: one torch thread per module, the glyph-sized TRADE space."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from students_support import GLYPH

from kd_compile.students import create_space
from kd_compile.students.trade import TradeSpace
from kd_compile.testing.spaces import single_thread


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    with single_thread():
        yield


@pytest.fixture(scope="module")
def glyph_space() -> TradeSpace:
    space = create_space("trade", **GLYPH)
    assert isinstance(space, TradeSpace)
    return space
