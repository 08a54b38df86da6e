"""Random search, and the replay-safe base class the built-in strategies share.

:class:`ReplayableStrategy` keeps no RNG stream: each ``ask`` draws from a generator seeded by
(strategy seed, number of trials told, suggestions asked since the last tell). Rebuilding a
strategy from the journal by ``tell(past_trials)`` -- in one call or batch by batch -- and then
asking gives the proposal the original run made at that point.
"""

from __future__ import annotations

import numpy as np

from .base import Strategy, register_strategy
from .gp import derive_seed, fresh_samples, seen_keys
from .space import Config
from .trial import Suggestion, Trial


class ReplayableStrategy(Strategy):
    """Strategy whose draws are a pure function of (seed, trials told, pending asks).

    Subclasses implement ``_ask`` and may use :meth:`draw_rng` and :meth:`taken_keys`.
    Suggestions asked but not yet told are *pending*: later asks avoid them so that an
    asynchronous loop (ask again before telling) does not get the same config twice.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        self._pending: dict[tuple[str, float], Config] = {}
        self._asked_since_tell = 0
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def ask(self, n: int = 1) -> list[Suggestion]:
        out = super().ask(n)
        for s in out:
            self._pending[(self.space.key(s.config), s.fidelity)] = s.config
        self._asked_since_tell += n
        return out

    def tell(self, trials: list[Trial]) -> None:
        for t in trials:
            self._pending.pop((self.space.key(t.config), t.fidelity), None)
        self._asked_since_tell = 0
        super().tell(trials)

    def draw_rng(self, tag: str = "") -> np.random.Generator:
        """A generator for this ask; ``tag`` separates independent uses within one ask."""
        return np.random.default_rng(self.draw_seed(tag))

    def draw_seed(self, tag: str = "") -> int:
        return derive_seed(self.seed, self.name, tag, len(self.trials), self._asked_since_tell)

    def taken_keys(self, fidelity: float | None = None) -> set[str]:
        """Keys of configs evaluated (any status) or pending: never propose these again.

        Args:
            fidelity: only those evaluated or pending at this fidelity (multi-fidelity
                strategies may re-propose a config at another fidelity); None: any fidelity.
        """
        told = [t for t in self.trials if fidelity is None or t.fidelity == fidelity]
        pend = {k for k, f in self._pending if fidelity is None or f == fidelity}
        return seen_keys(self.space, told) | pend | self.excluded_keys()


@register_strategy("random")
class RandomSearch(ReplayableStrategy):
    """Uniform samples from the space (``space.sample``), never repeating a config told or
    pending while the space still has unseen configs (50 redraws per suggestion); with a
    feasibility predicate, draws it rejects are redrawn too (bounded, see ``fresh_samples``)."""

    def _ask(self, n: int) -> list[Suggestion]:
        rng = self.draw_rng()
        return [Suggestion(c, 1.0) for c in fresh_samples(self.space, n, self.taken_keys(), rng)]
