"""How a search that ships nothing ends: a limit the user set, broken by every candidate, is exit 6 (a
constraint they can loosen); candidates that failed to train are exit 9."""

from __future__ import annotations

from kd_compile import api
from kd_compile.config import CompileConfig
from kd_compile.errors import ConstraintError, SearchError
from kd_compile.evaluate import Reference
from kd_compile.search import Trial
from kd_compile.targets import get_target

REF = Reference(params=1e5, flops=1e7, latency_ms=0.1, accuracy=0.9, acc_target=0.9)


def _trial(n: int, status: str, error: str, latency_ms: float | None = None) -> Trial:
    return Trial(number=n, config={"x": n}, status=status, error=error,
                 metrics={"latency_ms": latency_ms} if latency_ms is not None else {})


def test_every_candidate_over_a_memory_limit_is_a_constraint_error():
    cfg = CompileConfig.from_options("t.pt", max_memory="5B", max_latency="none")
    trials = [_trial(0, "infeasible", "memory 36.9KB > 5B"), _trial(1, "infeasible", "memory 9.22KB > 5B")]
    err = api._no_student(cfg, trials, REF, get_target("t4"))
    assert isinstance(err, ConstraintError) and err.exit_code == 6
    assert "every candidate broke the constraints (2 tried): memory 36.9KB > 5B; memory 9.22KB > 5B" in str(err)
    assert "--max-memory" in err.hint


def test_all_slower_than_the_latency_limit_says_how_slow_the_fastest_was():
    cfg = CompileConfig.from_options("t.pt")  # the implicit --max-latency 1x
    trials = [_trial(0, "infeasible", "latency 0.3ms > 0.1ms", 0.3), _trial(1, "infeasible", "latency", 0.2)]
    err = api._no_student(cfg, trials, REF, get_target("t4"))
    assert isinstance(err, ConstraintError) and "the fastest of 2 took 0.2 ms, 2.00x the teacher's" in str(err)


def test_a_failed_training_among_them_is_a_search_error():
    cfg = CompileConfig.from_options("t.pt", max_memory="5B", max_latency="none")
    trials = [_trial(0, "infeasible", "memory 36.9KB > 5B"), _trial(1, "failed", "NaN loss")]
    err = api._no_student(cfg, trials, REF, get_target("t4"))
    assert isinstance(err, SearchError) and err.exit_code == 9 and "NaN loss" in str(err)
