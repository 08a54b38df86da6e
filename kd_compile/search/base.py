"""Search strategy interface: ``ask(n) -> [Suggestion]``, ``tell([Trial])``, and its registry.

All strategies *minimise* ``Trial.score`` (see ``trial.py`` for statuses). Strategies must stay
deterministic under a seed: the search loop rebuilds a strategy's state on ``--resume`` by
replaying the journal through ``ask``/``tell``.

Fidelity: a float in (0, 1], the share of the proxy training budget a suggestion asks for
(1.0 = the search's full proxy training). Single-fidelity strategies always ask for 1.0.
The training budget counts full-fidelity trainings: the search loop charges a trial at
fidelity f with f of it, so a multi-fidelity strategy given ``budget=B`` may run, say, 3B
evaluations at fidelity 1/3.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import UsageError
from ..registry import Registry
from .space import ParamSpace
from .trial import Suggestion, Trial, best_trial

__all__ = ["Strategy", "create_strategy", "get_strategy", "list_strategies", "register_strategy"]


class Strategy:
    """Base strategy. Subclasses implement ``_ask`` and optionally ``_tell``.

    Args:
        space: the search space.
        seed: seed for every random choice the strategy makes.
        budget: the training budget the loop will spend, in full-fidelity trainings (a trial
            at fidelity f costs f); strategies may plan with it.
    """

    name = "base"
    multi_fidelity = False
    multi_objective = False

    def __init__(self, space: ParamSpace, seed: int = 0, budget: int | None = None, **options: Any):
        if options:
            raise UsageError(f"strategy '{self.name}' got unknown options: {', '.join(sorted(options))}")
        self.space = space
        self.budget = budget
        self.trials: list[Trial] = []
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        self.seed = int(seed)
        self.rng = np.random.default_rng(self.seed)

    # -- public API --------------------------------------------------------------------------
    def ask(self, n: int = 1) -> list[Suggestion]:
        if n < 1:
            raise ValueError("ask(n) needs n >= 1")
        out = self._ask(n)
        if len(out) != n:
            raise RuntimeError(f"strategy {self.name} returned {len(out)} suggestions, asked {n}")
        return out

    def tell(self, trials: list[Trial]) -> None:
        self.trials.extend(trials)
        self._tell(trials)

    # -- hooks -------------------------------------------------------------------------------
    def _ask(self, n: int) -> list[Suggestion]:
        raise NotImplementedError

    def _tell(self, trials: list[Trial]) -> None:
        """Update internal state. Default: nothing (``self.trials`` already holds them)."""

    # -- helpers for subclasses ----------------------------------------------------------------
    def completed(self, fidelity: float | None = None) -> list[Trial]:
        """Ok trials (optionally at one fidelity)."""
        return [t for t in self.trials if t.ok and (fidelity is None or t.fidelity == fidelity)]

    def best(self) -> Trial | None:
        """The best trial told so far (``best_trial``'s rule)."""
        return best_trial(self.trials)


_STRATEGIES: Registry[Strategy] = Registry("strategies", UsageError)


def get_strategy(name: str) -> type[Strategy]:
    """The strategy class registered as ``name`` (an unknown name raises ``UsageError``)."""
    return _STRATEGIES.get(name)  # type: ignore[return-value]


def register_strategy(name: str):
    def deco(cls):
        cls.name = name
        return _STRATEGIES.register(name)(cls)

    return deco


def create_strategy(name: str, space: ParamSpace, seed: int = 0, **kwargs: Any) -> Strategy:
    """Create a registered strategy (built-ins register when ``kd_compile.search`` is imported)."""
    return _STRATEGIES.create(name, space, seed=seed, **kwargs)


def list_strategies() -> list[str]:
    return _STRATEGIES.names()
