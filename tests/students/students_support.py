"""Shared helpers of the student-family tests (imported by name; not collected as tests)."""

from __future__ import annotations

import numpy as np

from kd_compile.search.space import ParamSpace

GLYPH = {"input_shape": (1, 24, 24), "num_classes": 62}


def samples(space: ParamSpace, n: int, seed: int = 0) -> list[dict]:
    """``n`` seeded samples of ``space``."""
    rng = np.random.default_rng(seed)
    return [space.sample(rng) for _ in range(n)]
