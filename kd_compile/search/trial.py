"""Trials and the rules over them: statuses, the best trial, the Pareto front.

A trial is one evaluated candidate. Its status is ``ok`` (score set), ``infeasible`` (violated a
hard constraint; never trained; score None) or ``failed`` (training, export or measurement
broke; score None, the reason in ``error``). Strategies *minimise* ``Trial.score``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

from .space import Config

__all__ = ["Suggestion", "Trial", "TrialStatus", "best_trial", "pareto_mask", "pareto_trials"]


class TrialStatus(StrEnum):
    """How an evaluation ended (a ``str``, so journals and reports hold the plain word)."""

    OK = "ok"
    INFEASIBLE = "infeasible"
    FAILED = "failed"


@dataclass(frozen=True)
class Suggestion:
    """A config a strategy proposes, and the fidelity (share of the proxy training) it asks for."""

    config: Config
    fidelity: float = 1.0


@dataclass(frozen=True)
class Trial:
    """One evaluated candidate.

    Attributes:
        number: 0-based order of evaluation.
        config: the config (canonical).
        status: a ``TrialStatus`` (a plain string is converted).
        score: objective to minimise (None unless ok).
        fidelity: the share of the proxy budget used, in (0, 1].
        metrics: accuracy, params, flops, latency_ms, ... (whatever was computed).
        error: why it was infeasible or failed.
        duration_s: wall time of the evaluation.
    """

    number: int
    config: Config
    status: TrialStatus
    score: float | None = None
    fidelity: float = 1.0
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    duration_s: float = 0.0

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "status", TrialStatus(self.status))
        except ValueError:
            raise ValueError(f"bad status {self.status}") from None
        if self.status is TrialStatus.OK and (self.score is None or not math.isfinite(self.score)):
            raise ValueError("an ok trial needs a finite score")

    @property
    def ok(self) -> bool:
        return self.status is TrialStatus.OK

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["status"] = str(self.status)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Trial:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def _top_fidelity_ok(trials: Iterable[Trial]) -> list[Trial]:
    ok = [t for t in trials if t.ok]
    top = max((t.fidelity for t in ok), default=None)
    return [t for t in ok if t.fidelity == top]


def best_trial(trials: Iterable[Trial], fidelity: float | None = None) -> Trial | None:
    """The one rule for "the best trial": the lowest score among the ok trials at the highest
    fidelity evaluated (or at ``fidelity``); ties go to the earlier trial. None if none is ok."""
    if fidelity is None:
        pool = _top_fidelity_ok(trials)
    else:
        pool = [t for t in trials if t.ok and t.fidelity == fidelity]
    return min(pool, key=lambda t: t.score) if pool else None  # type: ignore[arg-type,return-value]


def pareto_mask(y: np.ndarray) -> np.ndarray:
    """Rows of ``y`` ``(n, m)`` (every column maximised) that no other row dominates."""
    y = np.asarray(y, dtype=np.float64)
    mask = np.ones(len(y), dtype=bool)
    for i in range(len(y)):
        mask[i] = not np.any(np.all(y >= y[i], axis=1) & np.any(y > y[i], axis=1))
    return mask


def pareto_trials(trials: Iterable[Trial], objectives: Sequence[tuple[str, bool]]) -> list[Trial]:
    """The one Pareto-front function: ok trials at the highest fidelity that no other dominates.

    Args:
        trials: evaluated trials.
        objectives: ``(metric name, maximise)`` pairs read from ``Trial.metrics``.

    Returns:
        The non-dominated trials, in trial order.
    """
    pts = _top_fidelity_ok(trials)
    if not pts:
        return []
    y = np.array([[t.metrics[k] if up else -t.metrics[k] for k, up in objectives] for t in pts], dtype=np.float64)
    return [t for t, keep in zip(pts, pareto_mask(y)) if keep]
