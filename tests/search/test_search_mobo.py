"""Multi-objective BO: objectives come from the caller; targets, the Pareto front, validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kd_compile.errors import UsageError
from kd_compile.search import Objective, Trial, create_strategy, pareto_trials
from kd_compile.testing.strategies import FAST_OPTIONS, OBJECTIVES, ToySpace

torch.set_num_threads(1)


def _metrics(a: float, lat: float, p: float) -> dict[str, float]:
    return {"accuracy": a, "latency_ms": lat, "params": p}


def test_pareto_front_and_targets_with_the_compiler_objectives() -> None:
    space = ToySpace()
    strat = create_strategy("mobo", space, seed=0, objectives=OBJECTIVES)
    cfg = space.default()
    strat.tell(
        [
            Trial(0, cfg, "ok", 1.0, metrics=_metrics(0.9, 2.0, 1e6)),
            Trial(1, cfg, "ok", 1.0, metrics=_metrics(0.8, 1.0, 1e6)),
            Trial(2, cfg, "ok", 1.0, metrics=_metrics(0.8, 2.0, 1e6)),  # dominated by 0 and 1
            Trial(3, cfg, "infeasible", metrics={"params": 5e6}),
        ]
    )
    assert [t.number for t in strat.pareto_front()] == [0, 1]
    configs, y = strat.targets()
    assert len(configs) == 4 and y.shape == (4, 3)
    assert y[3, 0] < y[:3, 0].min()  # infeasible: accuracy (needs training) below all
    # params measured on the untrained student: kept; latency not measured: the worst feasible
    assert y[3, 2] == pytest.approx(-np.log(5e6)) and y[3, 1] == pytest.approx(-np.log(2.0))
    assert y[0, 0] == 0.9 and y[1, 1] == pytest.approx(-np.log(1.0))


def test_objectives_are_required_distinct_and_may_be_tuples() -> None:
    space = ToySpace()
    with pytest.raises(UsageError, match="objectives"):
        create_strategy("mobo", space, seed=0)
    with pytest.raises(UsageError, match="at least two"):
        create_strategy("mobo", space, seed=0, objectives=[Objective("accuracy", True)])
    with pytest.raises(UsageError, match="twice"):
        create_strategy("mobo", space, seed=0, objectives=[("a", True), ("a", False)])
    strat = create_strategy("mobo", space, seed=0, objectives=[("accuracy", True, None, True), ("params", False, 1.0)])
    assert strat.objectives == (
        Objective("accuracy", maximise=True, needs_training=True),
        Objective("params", maximise=False, log_floor=1.0),
    )


def test_objective_value_is_larger_is_better_and_log_floored() -> None:
    assert Objective("acc", maximise=True).value(0.5) == 0.5
    assert Objective("err", maximise=False).value(0.5) == -0.5
    assert Objective("lat", log_floor=1e-3).value(0.0) == pytest.approx(-math.log(1e-3))
    assert Objective("params", log_floor=1.0).value(100) == pytest.approx(-math.log(100))


def test_any_metric_names_and_a_minimised_metric_that_needs_training() -> None:
    """Nothing is hard-coded: an error rate (down, needs training) and a size (down, kept)."""
    space = ToySpace()
    objs = [Objective("err", needs_training=True), Objective("size", log_floor=1.0)]
    strat = create_strategy("mobo", space, seed=0, objectives=objs)
    cfg = space.default()
    strat.tell(
        [
            Trial(0, cfg, "ok", 1.0, metrics={"err": 0.2, "size": 10.0}),
            Trial(1, cfg, "ok", 1.0, metrics={"err": 0.4, "size": 5.0}),
            Trial(2, cfg, "infeasible", metrics={"err": 0.0, "size": 100.0}),
        ]
    )
    _, y = strat.targets()
    assert y[2, 0] < -0.4  # a never-trained candidate's error counts as worse than every real one
    assert y[2, 1] == pytest.approx(-math.log(100.0))
    assert [t.number for t in strat.pareto_front()] == [0, 1]


def test_pareto_front_is_pareto_trials_at_the_top_fidelity() -> None:
    space = ToySpace()
    strat = create_strategy("mobo", space, seed=0, objectives=OBJECTIVES)
    cfg = space.default()
    trials = [
        Trial(0, cfg, "ok", 1.0, fidelity=1 / 3, metrics=_metrics(0.99, 0.1, 1e3)),  # dominates, low fidelity
        Trial(1, cfg, "ok", 1.0, metrics=_metrics(0.7, 1.0, 1e5)),
        Trial(2, cfg, "ok", 1.0, metrics=_metrics(0.6, 2.0, 1e6)),
        Trial(3, cfg, "ok", 1.0, metrics={"accuracy": 0.99}),  # lacks metrics: not on the front
        Trial(4, cfg, "failed", error="diverged"),
    ]
    strat.tell(trials)
    front = strat.pareto_front()
    assert [t.number for t in front] == [1]
    usable = [t for t in trials if t.ok and t.number != 3]
    assert front == pareto_trials(usable, [(o.name, o.maximise) for o in OBJECTIVES])


def test_pareto_front_without_metrics_is_the_best_trial() -> None:
    space = ToySpace()
    strat = create_strategy("mobo", space, seed=0, objectives=OBJECTIVES)
    cfg = space.default()
    strat.tell([Trial(0, cfg, "ok", 2.0), Trial(1, cfg, "ok", 1.0), Trial(2, cfg, "infeasible")])
    assert [t.number for t in strat.pareto_front()] == [1]
    assert create_strategy("mobo", space, seed=0, objectives=OBJECTIVES).pareto_front() == []


def test_mobo_proposes_by_nehvi_over_custom_metrics() -> None:
    """After the design, proposals come from qNEHVI over the given metrics (new, valid configs)."""
    space = ToySpace()
    opts = {k: FAST_OPTIONS[k] for k in ("gp_maxiter", "n_candidates", "mc_samples")}
    strat = create_strategy(
        "mobo", space, seed=1, n_init=4, objectives=[("f1", True), ("f2", False, 1e-6)], **opts
    )
    seen = set()
    for i in range(6):
        (s,) = strat.ask(1)
        c = space.validate(s.config)
        assert space.key(c) not in seen
        seen.add(space.key(c))
        u = space.to_unit(c)
        metrics = {"f1": float(u[0]), "f2": float(u[1]) + 0.1}
        strat.tell([Trial(i, c, "ok", 1.0 - float(u[0]), metrics=metrics)])
    assert len(strat.targets()[0]) == 6


def test_nehvi_compiles_nothing_at_run_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """BoTorch would JIT-compile a fused C++ kernel for qLogNEHVI on its first use (a toolchain at
    run time, -march=native code in a shared cache); mobo keeps the PyTorch path on every machine."""
    import torch.utils.cpp_extension as cpp_extension
    from botorch.acquisition.multi_objective import logei

    builds: list[str] = []

    def build(name: str, *args, **kwargs):
        builds.append(name)
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(cpp_extension, "load", build)
    monkeypatch.setattr(logei, "_load_attempted", False)  # as in a fresh process
    monkeypatch.setattr(logei, "_C", None)
    space = ToySpace()
    opts = {k: FAST_OPTIONS[k] for k in ("gp_maxiter", "n_candidates", "mc_samples")}
    strat = create_strategy("mobo", space, seed=1, n_init=3, objectives=[("f1", True), ("f2", False, 1e-6)], **opts)
    for i in range(5):
        (s,) = strat.ask(1)
        u = space.to_unit(s.config)
        strat.tell([Trial(i, s.config, "ok", 1.0 - float(u[0]), metrics={"f1": float(u[0]), "f2": float(u[1]) + 0.1})])
    assert len(strat.targets()[0]) == 5  # qNEHVI proposed the last two
    assert not builds and logei._C is None
