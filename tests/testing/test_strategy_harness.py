"""The strategy conformance harness: its toy space and problem, and how it creates strategies."""

from __future__ import annotations

from kd_compile.search import ParamSpace, TrialStatus
from kd_compile.testing.strategies import (
    CHECKS,
    FAST_OPTIONS,
    OBJECTIVES,
    ToySpace,
    make_strategy,
    toy_evaluate,
    toy_score,
)


def test_toy_space_is_a_plain_param_space() -> None:
    space = ToySpace()
    assert isinstance(space, ParamSpace) and not hasattr(space, "build")
    assert space.name == "toy" and len(space.params) == 6 and space.dim == 8
    assert ToySpace(params=space.params[:2]).param_names == ["width", "depth"]


def test_toy_objective_prefers_its_optimum() -> None:
    space = ToySpace()
    cfg = space.default()
    good = space.from_unit([0.35, 0.6, 0.7, 0.5, 0.0, 1.0, 0.0, 0.25])
    assert good["act"] == "gelu"
    assert toy_score(space, good) < toy_score(space, dict(cfg, act="relu", width=64))
    # low fidelity is biased upwards but correlated
    assert toy_score(space, good, 1 / 3) > toy_score(space, good)


def test_toy_evaluate_marks_infeasible_and_reports_the_objectives() -> None:
    space = ToySpace()
    ev = toy_evaluate(space)
    big = dict(space.default(), width=64, depth=6)
    t = ev(big, 1.0, 0)
    assert t.status is TrialStatus.INFEASIBLE and t.score is None and t.metrics["params_ratio"] > 1
    ok = ev(space.default(), 1.0, 1)
    assert ok.status is TrialStatus.OK and {o.name for o in OBJECTIVES} <= set(ok.metrics)


def test_make_strategy_passes_only_the_options_a_strategy_takes() -> None:
    space = ToySpace()
    mobo = make_strategy("mobo", space, seed=0, budget=10)
    assert mobo.objectives == OBJECTIVES and mobo.gp_maxiter == FAST_OPTIONS["gp_maxiter"]
    assert mobo.mc_samples == FAST_OPTIONS["mc_samples"]
    turbo = make_strategy("turbo", space, seed=0, budget=10)
    assert turbo.n_candidates == FAST_OPTIONS["n_candidates"]
    make_strategy("random", space, seed=0, budget=10)  # takes none of them, and gets none


def test_every_check_is_named_check() -> None:
    assert CHECKS and all(c.__name__.startswith("check_") for c in CHECKS)
