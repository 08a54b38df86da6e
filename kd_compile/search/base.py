"""Search strategy interface: ``ask(n) -> [Suggestion]``, ``tell([Trial])``.

All strategies *minimise* ``Trial.score``. A trial is ``ok`` (score set), ``infeasible``
(violated a hard constraint; never trained; score None) or ``failed`` (training or export
broke; score None). Strategies must stay deterministic under a seed: the search loop rebuilds
a strategy's state on ``--resume`` by replaying the journal through ``ask``/``tell``.

Fidelity: a float in (0, 1], the share of the proxy training budget a suggestion asks for
(1.0 = the search's full proxy training). Single-fidelity strategies always ask for 1.0.
The training budget counts full-fidelity trainings: the search loop charges a trial at
fidelity f with f of it, so a multi-fidelity strategy given ``budget=B`` may run, say, 3B
evaluations at fidelity 1/3.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import UsageError
from ..registry import Registry
from ..students.base import Config, SearchSpace

OK, INFEASIBLE, FAILED = "ok", "infeasible", "failed"


@dataclass(frozen=True)
class Suggestion:
    config: Config
    fidelity: float = 1.0


@dataclass(frozen=True)
class Trial:
    """One evaluated candidate.

    Attributes:
        number: 0-based order of evaluation.
        config: the student config (canonical).
        status: ``ok`` | ``infeasible`` | ``failed``.
        score: objective to minimise (None unless ok).
        fidelity: the share of the proxy budget used (see module docstring).
        metrics: accuracy, params, flops, latency_ms, ... (whatever was computed).
        error: why it was infeasible or failed.
        duration_s: wall time of the evaluation.
    """

    number: int
    config: Config
    status: str
    score: float | None = None
    fidelity: float = 1.0
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    duration_s: float = 0.0

    def __post_init__(self) -> None:
        if self.status not in (OK, INFEASIBLE, FAILED):
            raise ValueError(f"bad status {self.status}")
        if self.status == OK and (self.score is None or not math.isfinite(self.score)):
            raise ValueError("an ok trial needs a finite score")

    @property
    def ok(self) -> bool:
        return self.status == OK

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Trial:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


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

    def __init__(self, space: SearchSpace, seed: int = 0, budget: int | None = None, **options: Any):
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
        ok = [t for t in self.trials if t.ok and t.fidelity >= 1.0] or self.completed()
        return min(ok, key=lambda t: t.score) if ok else None  # type: ignore[arg-type,return-value]


STRATEGIES: Registry[Strategy] = Registry("strategies", UsageError)


def register_strategy(name: str):
    def deco(cls):
        cls.name = name
        return STRATEGIES.register(name)(cls)

    return deco


def _load_builtins() -> None:
    import importlib

    for mod in ("random", "turbo", "more"):
        try:
            importlib.import_module(f"{__package__}.{mod}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__package__}.{mod}":
                raise


def create_strategy(name: str, space: SearchSpace, seed: int = 0, **kwargs: Any) -> Strategy:
    _load_builtins()
    return STRATEGIES.create(name, space, seed=seed, **kwargs)


def list_strategies() -> list[str]:
    _load_builtins()
    return STRATEGIES.names()
