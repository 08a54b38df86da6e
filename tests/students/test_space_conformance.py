"""Every registered student space passes the conformance suite (kd_compile/testing/spaces.py)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from kd_compile.students import list_spaces
from kd_compile.testing.spaces import CHECKS


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("name", list_spaces())
def test_space_conformance(name: str, check: Callable[[str], None]) -> None:
    check(name)
