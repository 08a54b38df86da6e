"""Space-filling designs: scrambled Sobol points (``sobol``) and Latin hypercubes (``lhs``).

Both map rows of a unit-cube design through the space's encoding and skip rows that decode to a
config already taken (discrete parameters), so a run never repeats itself while the space has
unseen configs; rows the feasibility predicate rejects are skipped too. Rows are indexed by
the number of trials told plus pending, so a journal replay (``ask``/``tell`` round by round)
proposes the same rows again.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import register_strategy
from .gp import derive_seed, pick_from_unit, sobol
from .random import ReplayableStrategy
from .space import ParamSpace
from .trial import Suggestion

__all__ = ["LatinHypercubeSearch", "SobolSearch"]


@register_strategy("sobol")
class SobolSearch(ReplayableStrategy):
    """Scrambled Sobol sequence over the unit-cube encoding; duplicates (discrete params)
    are skipped to the next point."""

    def _ask(self, n: int) -> list[Suggestion]:
        idx = len(self.trials) + self._asked_since_tell
        u = sobol(self.space.dim, 4 * n + 16, derive_seed(self.seed, "sobol"), skip=idx)
        picked = pick_from_unit(self.space, u, n, self.taken_keys(), self.draw_rng())
        return [Suggestion(c, 1.0) for c in picked]


@register_strategy("lhs")
class LatinHypercubeSearch(ReplayableStrategy):
    """Latin hypercube designs: block ``b`` is an LHS of ``block_size`` points (default: the
    budget, so a whole run is one stratified design); later blocks are new designs.

    Options:
        block_size: points per Latin hypercube (default ``budget`` or 16).
    """

    def __init__(
        self,
        space: ParamSpace,
        seed: int = 0,
        budget: int | None = None,
        *,
        block_size: int | None = None,
        **options: Any,
    ) -> None:
        super().__init__(space, seed=seed, budget=budget, **options)
        self.block_size = int(block_size or budget or 16)

    def _rows(self, start: int, count: int) -> np.ndarray:
        """Rows ``start .. start + count`` of the concatenated blocks (each block seeded by its
        index, so any row can be recomputed without the earlier ones)."""
        from scipy.stats import qmc

        rows: list[np.ndarray] = []
        b, off = divmod(start, self.block_size)
        while sum(len(r) for r in rows) < count:
            rng = np.random.default_rng(derive_seed(self.seed, "lhs", b))
            rows.append(qmc.LatinHypercube(d=self.space.dim, rng=rng).random(self.block_size)[off:])
            b, off = b + 1, 0
        return np.vstack(rows)[:count]

    def _ask(self, n: int) -> list[Suggestion]:
        idx = len(self.trials) + self._asked_since_tell
        u = self._rows(idx, 4 * n + 16)
        picked = pick_from_unit(self.space, u, n, self.taken_keys(), self.draw_rng())
        return [Suggestion(c, 1.0) for c in picked]
