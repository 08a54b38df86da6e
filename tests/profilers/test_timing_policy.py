"""``kd_compile.profilers.timing``: the TimingPolicy, its timing loop and latency statistics.

The loop is tested for real; only the clock and the timed function are fakes, so that the
stopping rules are checked deterministically and instantly.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from kd_compile.errors import UsageError
from kd_compile.profilers import TimingPolicy, create_profiler, latency_stats, onnxrt, torch_timer
from kd_compile.profilers.tensorrt import runner
from kd_compile.profilers.timing import resolve_timing, time_calls, time_steps


class FakeClock:
    """A clock (seconds) that only moves when the fake workload says so."""

    def __init__(self) -> None:
        self.t = 1000.0
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.t

    def work(self, ms: float) -> None:
        self.t += ms / 1e3


# --- statistics --------------------------------------------------------------------------------


def test_latency_stats_on_known_samples() -> None:
    s = latency_stats([1.0, 2.0, 3.0, 4.0, 100.0])
    assert s["p50"] == 3.0
    assert s["min"] == 1.0 and s["max"] == 100.0
    # MAD of |x - 3| = [2,1,0,1,97] is 1; robust cv = 1.4826 * 1 / 3, untouched by the outlier
    assert s["cv"] == pytest.approx(1.4826 / 3)
    assert s["median_rel_se"] == pytest.approx(1.2533 * 1.4826 / 3 / math.sqrt(5))
    assert s["mean_rel_se"] == pytest.approx(np.std([1, 2, 3, 4, 100], ddof=1) / 22 / math.sqrt(5))
    assert s["p50"] <= s["p90"] <= s["p99"]
    with pytest.raises(ValueError):
        latency_stats([])


# --- the loop on step functions that report their own latency (as CUDA events do) --------------


def test_time_steps_converges_on_steady_step() -> None:
    calls = []

    def step() -> float:
        calls.append(1)
        return 2.0 + 0.001 * (len(calls) % 3)

    policy = TimingPolicy(warmup=3, min_iters=20, max_iters=1000, min_time_s=0.0, rel_se=0.01)
    r = time_steps(step, policy)
    assert r.stopped_by == "converged"
    assert r.n == 20  # the first check, at min_iters, already passes
    assert len(calls) == 23  # warm-up runs are made but not recorded
    assert r.stats["p50"] == pytest.approx(2.001)


def test_time_steps_stops_at_max_iters_on_noisy_step() -> None:
    rng = np.random.default_rng(0)
    policy = TimingPolicy(warmup=0, min_iters=10, max_iters=40, min_time_s=0.0, rel_se=1e-4)
    r = time_steps(lambda: float(rng.lognormal(0.0, 1.5)), policy)
    assert r.stopped_by == "max_iters" and r.n == 40


def test_time_steps_respects_min_time() -> None:
    def step() -> float:
        time.sleep(0.002)
        return 2.0

    policy = TimingPolicy(warmup=0, min_iters=1, max_iters=10_000, min_time_s=0.1, rel_se=0.5)
    r = time_steps(step, policy)
    assert r.stopped_by == "converged"
    assert r.wall_s >= 0.1
    assert 10 <= r.n < 200


def test_policy_rejects_bad_limits() -> None:
    with pytest.raises(UsageError):
        TimingPolicy(min_iters=10, max_iters=5)
    with pytest.raises(UsageError):
        TimingPolicy(min_iters=0)
    with pytest.raises(UsageError):
        TimingPolicy(rel_se=0)
    with pytest.raises(UsageError):
        TimingPolicy(max_time_s=0)
    with pytest.raises(UsageError):
        TimingPolicy(warmup=-1)
    with pytest.raises(UsageError, match="stop"):
        TimingPolicy(stop="whenever")
    with pytest.raises(UsageError, match="clock"):
        TimingPolicy(clock="sundial")


# --- the stopping rules on a fake clock: time_calls times the function with it -----------------


def _steady(clock: FakeClock):
    i = [0]

    def fn() -> None:
        i[0] += 1
        clock.work(2.0 + 0.002 * (i[0] % 5))  # 2 ms +- 0.1%

    return fn


def _noisy(clock: FakeClock, seed: int = 0):
    rng = np.random.default_rng(seed)
    return lambda: clock.work(float(rng.lognormal(0.0, 1.0)))  # cv ~ 1.3


@pytest.mark.parametrize("stop", ["median_se", "mean_se"])
def test_rule_stops_early_on_a_steady_clock(stop: str) -> None:
    clock = FakeClock()
    policy = TimingPolicy(warmup=5, min_iters=10, max_iters=10_000, min_time_s=0.1, stop=stop, rel_se=0.01)
    r = time_calls(_steady(clock), policy, clock=clock)
    assert r.stopped_by == "converged"
    # min_time_s (0.1 s of 2 ms runs: 50 runs) is the binding limit, not max_iters
    assert 50 <= r.n <= 52
    assert r.wall_s == pytest.approx(sum(r.samples_ms) / 1e3) and r.wall_s >= 0.1  # fake seconds
    assert r.stats["p50"] == pytest.approx(2.004, rel=1e-6)
    assert r.warmup == 5


@pytest.mark.parametrize("stop", ["median_se", "mean_se"])
def test_rule_runs_to_max_iters_on_a_noisy_clock(stop: str) -> None:
    clock = FakeClock()
    policy = TimingPolicy(warmup=0, min_iters=10, max_iters=300, min_time_s=0.0, stop=stop, rel_se=0.01)
    r = time_calls(_noisy(clock), policy, clock=clock)
    assert r.stopped_by == "max_iters" and r.n == 300
    assert r.stats[f"{stop.split('_')[0]}_rel_se"] > 0.01


def test_max_time_stops_a_noisy_clock() -> None:
    clock = FakeClock()
    policy = TimingPolicy(warmup=0, min_iters=10, max_iters=100_000, min_time_s=0.0, max_time_s=1.0, rel_se=1e-6)
    r = time_calls(_noisy(clock), policy, clock=clock)
    assert r.stopped_by == "max_time"
    assert 1.0 <= r.wall_s < 1.0 + 0.2  # stopped right after the run that crossed the limit


def test_min_iters_binds_before_the_rule() -> None:
    clock = FakeClock()
    policy = TimingPolicy(warmup=0, min_iters=77, max_iters=1000, min_time_s=0.0, rel_se=0.5)
    r = time_calls(_steady(clock), policy, clock=clock)
    assert r.stopped_by == "converged" and r.n == 77


def test_fixed_count_ignores_convergence() -> None:
    clock = FakeClock()
    r = time_calls(_steady(clock), TimingPolicy.fixed(123, warmup=4), clock=clock)
    assert r.stopped_by == "max_iters" and r.n == 123 and r.warmup == 4


def test_policy_clock_times_the_calls() -> None:
    """Without a clock argument the policy's clock times each call (cpu: thread time)."""
    busy = TimingPolicy.fixed(3, warmup=0, clock="cpu")

    def sleep() -> None:
        time.sleep(0.02)  # wall time, hardly any CPU time

    r = time_calls(sleep, busy)
    assert r.stats["max"] < 10.0  # ms of thread time, far below the 20 ms slept
    r = time_calls(sleep, TimingPolicy.fixed(3, warmup=0))
    assert r.stats["min"] >= 19.0


# --- the policy and the profilers' defaults ------------------------------------------------------


def test_defaults_are_the_profilers_previous_numbers() -> None:
    base = TimingPolicy(warmup=10, min_iters=50, max_iters=2000, min_time_s=1.0, max_time_s=60.0,
                        stop="median_se", rel_se=0.05, clock="wall")
    assert TimingPolicy() == base
    assert onnxrt.DEFAULT_TIMING == base and torch_timer.DEFAULT_TIMING == base
    assert runner.DEFAULT_TIMING == TimingPolicy(warmup=20, min_iters=100, max_iters=5000, rel_se=0.02)


def test_fast_policy_matches_the_old_fast_keywords() -> None:
    """api.py's fast measurement: the old keywords and TimingPolicy.fast() give one policy."""
    fast = TimingPolicy.fast()
    assert fast == TimingPolicy(warmup=5, min_iters=20, min_time_s=0.25)
    with create_profiler("onnxruntime", min_time_s=0.25, min_iters=20, warmup=5) as old:
        assert old.timing == fast
    with create_profiler("onnxruntime", timing=TimingPolicy.fast()) as new:
        assert new.timing == fast


def test_resolve_timing_overrides_and_aliases() -> None:
    default = TimingPolicy()
    assert resolve_timing(None, default) is default
    assert resolve_timing(None, default, warmup=None) is default  # None means "not given"
    p = resolve_timing(TimingPolicy.fast(), default, target_cv=0.02, clock="cpu")
    assert p == TimingPolicy(warmup=5, min_iters=20, min_time_s=0.25, rel_se=0.02, clock="cpu")
    assert p.to_dict()["rel_se"] == 0.02
    with pytest.raises(UsageError, match="unknown timing option 'min_time'"):
        resolve_timing(None, default, min_time=1.0)
    with pytest.raises(UsageError):
        resolve_timing(None, default, min_iters=5000)  # above max_iters
    with pytest.raises(UsageError, match="TimingPolicy"):
        resolve_timing({"warmup": 1}, default)  # type: ignore[arg-type]
    with pytest.raises(Exception):  # noqa: B017 - frozen dataclass
        default.warmup = 1  # type: ignore[misc]
