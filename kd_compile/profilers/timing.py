"""The one timing policy, timing loop and latency statistics every measuring profiler uses.

``TimingPolicy`` says how to time: untimed warm-up runs, then timed runs until the stopping
rule holds, never fewer than ``min_iters`` runs nor less than ``min_time_s`` seconds, never more
than ``max_iters`` runs or ``max_time_s`` seconds. Stopping rules:

* ``"median_se"`` (default): stop once the relative standard error of the median falls below
  ``rel_se``. It is estimated robustly from the median absolute deviation
  (``1.2533 * 1.4826 * MAD / median / sqrt(n)``, the normal-theory value), so a few preempted
  runs on a shared machine do not stop the loop early or late.
* ``"mean_se"``: the same with the relative standard error of the mean (``std / mean / sqrt(n)``).
* ``"fixed"``: no early stop; run ``max_iters`` times (``TimingPolicy.fixed(n)``).

``clock`` names the clock that times a host call: ``"wall"`` (``time.perf_counter``, the latency
a user sees) or ``"cpu"`` (``time.thread_time`` of the calling thread: the compute time without
the time other processes hold the core; only meaningful when the work runs on that thread).
GPU profilers time with CUDA events and accept only ``"wall"``.

``time_steps(step, policy)`` runs a step that reports its own latency (CUDA events);
``time_calls(fn, policy)`` times a host call with the policy's clock. Both return a
``TimingResult`` with ``latency_stats`` (p50/p90/p99, robust cv, relative standard errors);
``measurement_from_timing`` turns it into a Measurement.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import UsageError
from .base import Measurement

# normal-theory constants: sigma = 1.4826 * MAD, se(median) = 1.2533 * sigma / sqrt(n)
_MAD_TO_SIGMA = 1.4826
_SE_MEDIAN = 1.2533

STOP_RULES = ("median_se", "mean_se", "fixed")
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.thread_time}
CLOCK_TIMERS = {"wall": "perf_counter", "cpu": "thread_time"}

# keyword names profilers accept besides ``timing=`` (the pre-TimingPolicy options);
# ``target_cv`` is the old name of ``rel_se``
_ALIASES = {"target_cv": "rel_se"}


@dataclass(frozen=True)
class TimingPolicy:
    """How a measuring profiler times a model.

    Attributes:
        warmup: untimed runs first (allocator, caches, lazy initialisation, JIT).
        min_iters: never stop before this many timed runs.
        max_iters: always stop at this many timed runs.
        min_time_s: never stop before this many seconds of timed runs.
        max_time_s: always stop after this many seconds of timed runs.
        stop: stopping rule, ``"median_se"``, ``"mean_se"`` or ``"fixed"`` (see the module).
        rel_se: the rule's threshold on the relative standard error (``target_cv`` before).
        clock: ``"wall"`` or ``"cpu"``: the clock that times one host call.
    """

    warmup: int = 10
    min_iters: int = 50
    max_iters: int = 2000
    min_time_s: float = 1.0
    max_time_s: float = 60.0
    stop: str = "median_se"
    rel_se: float = 0.05
    clock: str = "wall"

    def __post_init__(self) -> None:
        if self.min_iters < 1 or self.max_iters < self.min_iters:
            raise UsageError(f"need 1 <= min_iters <= max_iters, got {self.min_iters}, {self.max_iters}")
        if self.warmup < 0 or self.min_time_s < 0 or self.max_time_s <= 0 or self.rel_se <= 0:
            raise UsageError("warmup, min_time_s must be >= 0; max_time_s, rel_se (target_cv) > 0")
        if self.stop not in STOP_RULES:
            raise UsageError(f"stop must be one of {', '.join(STOP_RULES)}, got '{self.stop}'")
        if self.clock not in CLOCKS:
            raise UsageError(f"clock must be one of {', '.join(CLOCKS)}, got '{self.clock}'")

    @classmethod
    def fast(cls) -> TimingPolicy:
        """A quick measurement (5 warm-up runs, at least 20 runs and 0.25 s), else the defaults."""
        return cls(warmup=5, min_iters=20, min_time_s=0.25)

    @classmethod
    def fixed(cls, iters: int, warmup: int = 10, clock: str = "wall") -> TimingPolicy:
        """Exactly ``iters`` timed runs after ``warmup`` (``max_time_s`` still bounds them)."""
        return cls(warmup=warmup, min_iters=iters, max_iters=iters, min_time_s=0.0, stop="fixed", clock=clock)

    def replace(self, **changes: Any) -> TimingPolicy:
        """A copy with ``changes``; ``None`` values are ignored, ``target_cv`` means ``rel_se``.

        Raises:
            UsageError: an unknown option name.
        """
        names = {f.name for f in dataclasses.fields(self)}
        kw: dict[str, Any] = {}
        for key, value in changes.items():
            name = _ALIASES.get(key, key)
            if name not in names:
                known = ", ".join(sorted(names | set(_ALIASES)))
                raise UsageError(f"unknown timing option '{key}' (known: {known})")
            if value is not None:
                kw[name] = value
        return dataclasses.replace(self, **kw) if kw else self

    def now(self) -> Callable[[], float]:
        """The clock function of ``clock`` (seconds)."""
        return CLOCKS[self.clock]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def resolve_timing(timing: TimingPolicy | None, default: TimingPolicy, **overrides: Any) -> TimingPolicy:
    """The policy a profiler runs with: ``timing`` (else its ``default``) with keyword overrides.

    Profilers accept the pre-TimingPolicy keywords (``warmup``, ``min_iters``, ``max_iters``,
    ``min_time_s``, ``max_time_s``, ``target_cv``) as overrides; ``None`` means "not given".

    Raises:
        UsageError: ``timing`` is not a TimingPolicy, or an override is unknown or invalid.
    """
    if timing is not None and not isinstance(timing, TimingPolicy):
        raise UsageError(f"timing must be a TimingPolicy, got {type(timing).__name__}")
    return (timing or default).replace(**overrides)


@dataclass(frozen=True)
class TimingResult:
    """Per-run latencies of one timing loop and why it stopped.

    Attributes:
        samples_ms: one latency per timed run, in run order, milliseconds.
        stopped_by: ``"converged"``, ``"max_iters"`` or ``"max_time"`` (or the tool that timed).
        wall_s: seconds the timed part took (warm-up excluded).
        warmup: number of untimed warm-up runs.
        stats: ``latency_stats(samples_ms)``.
    """

    samples_ms: tuple[float, ...]
    stopped_by: str
    wall_s: float
    warmup: int
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.samples_ms)


def latency_stats(samples_ms: Any) -> dict[str, float]:
    """Summary statistics of latency samples.

    Args:
        samples_ms: 1-D sequence of per-run latencies in ms (at least one).

    Returns:
        dict with ``p50``, ``p90``, ``p99``, ``mean``, ``min``, ``max``, ``std``,
        ``cv`` (robust: 1.4826 * MAD / median), ``median_rel_se`` and ``mean_rel_se`` (relative
        standard errors of the median and the mean, the stopping rules' statistics).
    """
    a = np.asarray(samples_ms, dtype=np.float64)
    if a.ndim != 1 or a.size == 0:
        raise ValueError("latency_stats needs a non-empty 1-D sequence")
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    mad = float(np.median(np.abs(a - p50)))
    sigma = _MAD_TO_SIGMA * mad
    cv = sigma / p50 if p50 > 0 else math.inf
    rel_se = _SE_MEDIAN * cv / math.sqrt(a.size)
    mean = float(a.mean())
    std = float(a.std(ddof=1)) if a.size > 1 else 0.0
    return {
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "mean": mean,
        "min": float(a.min()),
        "max": float(a.max()),
        "std": std,
        "cv": float(cv),
        "median_rel_se": float(rel_se),
        "mean_rel_se": std / mean / math.sqrt(a.size) if mean > 0 else math.inf,
    }


def _converged(samples: list[float], policy: TimingPolicy) -> bool:
    s = latency_stats(samples)
    key = "median_rel_se" if policy.stop == "median_se" else "mean_rel_se"
    return s[key] <= policy.rel_se


def time_steps(
    step: Callable[[], float], policy: TimingPolicy, *, clock: Callable[[], float] | None = None
) -> TimingResult:
    """Run ``step`` under ``policy``; ``step`` runs the workload once and returns its latency (ms).

    Args:
        step: one run, returning its own latency in ms (e.g. from CUDA events).
        policy: warm-up, limits and stopping rule.
        clock: the clock of the ``min_time_s``/``max_time_s`` budget, in seconds
            (``time.perf_counter`` when ``None``; tests pass a fake one).

    Returns:
        TimingResult with the samples and the statistics of ``latency_stats``.
    """
    now = clock or time.perf_counter
    for _ in range(policy.warmup):
        step()
    samples: list[float] = []
    start = now()
    next_check = policy.min_iters
    stopped_by = "max_iters"
    while len(samples) < policy.max_iters:
        samples.append(float(step()))
        elapsed = now() - start
        if elapsed >= policy.max_time_s:
            stopped_by = "max_time"
            break
        n = len(samples)
        if policy.stop != "fixed" and n >= next_check and elapsed >= policy.min_time_s:
            # checking every ~5% of samples keeps the O(n log n) median cheap
            next_check = n + max(1, n // 20)
            if _converged(samples, policy):
                stopped_by = "converged"
                break
    wall = now() - start
    return TimingResult(tuple(samples), stopped_by, wall, policy.warmup, latency_stats(samples))


def time_calls(
    fn: Callable[[], object], policy: TimingPolicy, *, clock: Callable[[], float] | None = None
) -> TimingResult:
    """Time host calls of ``fn`` under ``policy`` with the policy's clock.

    Args:
        fn: runs the workload once (its return value is ignored).
        policy: warm-up, limits, stopping rule and clock.
        clock: a clock (seconds) replacing both the policy's per-call clock and the budget
            clock (tests pass a fake one); ``None``: the policy's clock times each call and
            ``time.perf_counter`` the budget.

    Returns:
        TimingResult with the samples and the statistics of ``latency_stats``.
    """
    now = clock or policy.now()

    def step() -> float:
        t0 = now()
        fn()
        return (now() - t0) * 1e3

    return time_steps(step, policy, clock=clock)


def measurement_from_timing(
    timing: TimingResult,
    *,
    device: str,
    runtime: str,
    precision: str,
    batch: int,
    threads: int | None,
    extra: dict[str, Any] | None = None,
) -> Measurement:
    """A ``method="measured"`` Measurement from a timing loop (latency = p50)."""
    s = timing.stats
    ex = {
        "mean_ms": s["mean"],
        "min_ms": s["min"],
        "max_ms": s["max"],
        "median_rel_se": s["median_rel_se"],
        "stopped_by": timing.stopped_by,
        "timed_wall_s": timing.wall_s,
        "warmup": timing.warmup,
    }
    ex.update(extra or {})
    return Measurement(
        method="measured",
        device=device,
        runtime=runtime,
        precision=precision,
        batch=batch,
        latency_ms=s["p50"],
        p50_ms=s["p50"],
        p90_ms=s["p90"],
        p99_ms=s["p99"],
        cv=s["cv"],
        iterations=timing.n,
        threads=threads,
        extra=ex,
    )


__all__ = [
    "CLOCKS",
    "CLOCK_TIMERS",
    "STOP_RULES",
    "TimingPolicy",
    "TimingResult",
    "latency_stats",
    "measurement_from_timing",
    "resolve_timing",
    "time_calls",
    "time_steps",
]
