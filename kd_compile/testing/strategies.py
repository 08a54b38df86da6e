"""Conformance suite for search strategies (architecture convention 9).

Every registered strategy must pass every check in :data:`CHECKS`;
``tests/search/test_strategy_conformance.py`` parametrizes them over ``list_strategies()``, as
optuna's ``optuna/testing/pytest_samplers.py`` does for samplers. A plugin author runs the same
suite::

    import pytest
    from kd_compile.testing.strategies import CHECKS

    @pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
    def test_my_strategy(check):
        check("my-strategy")

The checks drive strategies with :class:`ToySpace` and :func:`toy_evaluate`: a shifted
quadratic in the unit cube plus a categorical offset, with an infeasible region (a "too many
parameters" constraint) and, optionally, evaluations that fail. Lower fidelity adds a smooth,
correlated bias, so multi-fidelity strategies see a realistic low-fidelity signal. The space is
a plain ``ParamSpace`` (no model is ever built), and :func:`make_strategy` passes a strategy
that takes ``objectives`` (a multi-objective one) the metrics the toy evaluation reports,
:data:`OBJECTIVES`.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..search import (
    Config,
    Objective,
    Param,
    ParamSpace,
    Strategy,
    Trial,
    TrialStatus,
    create_strategy,
    get_strategy,
)

# Options that make model-based strategies fast enough for a unit test; each is passed only to
# strategies whose constructor accepts it (checked by signature), never to the others.
FAST_OPTIONS: dict[str, Any] = {"gp_maxiter": 8, "n_candidates": 128, "mc_samples": 8}

# The compiler's trade-off over the metrics :func:`toy_evaluate` (and the tabular benchmark)
# report, as a multi-objective strategy's ``objectives`` option: accuracy up (it exists only for
# trained candidates); latency and params down, on a log scale. :func:`make_strategy` passes it
# to every strategy whose constructor takes ``objectives``.
OBJECTIVES: tuple[Objective, ...] = (
    Objective("accuracy", maximise=True, needs_training=True),
    Objective("latency_ms", maximise=False, log_floor=1e-9),
    Objective("params", maximise=False, log_floor=1.0),
)


def _toy_params() -> list[Param]:
    return [
        Param("width", "int", 8, 64, default=32),
        Param("depth", "int", 1, 6, default=3),
        Param("lr", "float", 1e-4, 1e-1, log=True, default=1e-2),
        Param("kernel", "choice", choices=(3, 5, 7), default=5),
        Param("act", "cat", choices=("relu", "gelu", "silu"), default="relu"),
        Param("drop", "float", 0.0, 0.5, default=0.1),
    ]


class ToySpace(ParamSpace):
    """A six-parameter space (int, int, log-float, ordered choice, unordered cat, float).

    A plain ``ParamSpace``: strategies see configs only, so the suite needs no model.

    Args:
        params: other parameters (e.g. a tiny space to exhaust); default the six above.
        name: the space's name.
    """

    def __init__(self, params: Sequence[Param] | None = None, name: str = "toy") -> None:
        super().__init__(_toy_params() if params is None else params, name)


_OPTIMUM = np.array([0.35, 0.6, 0.7, 0.5, 0.0, 0.0, 0.0, 0.25])  # in ToySpace's unit encoding
_CAT_OFFSET = {"relu": 0.3, "gelu": 0.0, "silu": 0.15}


def toy_params_ratio(config: Config) -> float:
    """Stand-in for params/max_params: grows with width * depth (> 1 is infeasible)."""
    return float(config["width"] * config["depth"]) / 200.0


def toy_score(space: ParamSpace, config: Config, fidelity: float = 1.0) -> float:
    """Shifted quadratic + categorical offset (minimise); low fidelity adds a smooth bias."""
    u = space.to_unit(config)
    ordered = np.r_[u[:4], u[7:]]
    target = np.r_[_OPTIMUM[:4], _OPTIMUM[7:]]
    base = float(((ordered - target) ** 2).sum()) * 4.0 + _CAT_OFFSET[config["act"]]
    bias = (1.0 - fidelity) * (0.3 + 0.5 * float(u[0]))
    return 1.0 + base + bias


def _fails(space: ParamSpace, config: Config) -> bool:
    digest = hashlib.sha256(space.key(config).encode()).digest()
    return digest[0] < 52  # ~20 % of configs fail, fixed per config


def toy_evaluate(
    space: ParamSpace, *, with_failures: bool = False
) -> Callable[[Config, float, int], Trial]:
    """An ``evaluate(config, fidelity, number) -> Trial`` for ``space`` (a :class:`ToySpace`).

    Configs with ``width * depth > 200`` are infeasible (metrics carry ``params_ratio`` and
    ``params``); with ``with_failures`` a fixed ~20 % of configs fail as a broken training would;
    ok trials also carry ``accuracy`` and ``latency_ms`` (see :data:`OBJECTIVES`).
    """

    def evaluate(config: Config, fidelity: float, number: int) -> Trial:
        cfg = space.validate(config)
        ratio = toy_params_ratio(cfg)
        metrics = {"params_ratio": ratio, "params": ratio * 1e6}
        if ratio > 1.0:
            return Trial(number, cfg, TrialStatus.INFEASIBLE, None, fidelity, metrics, error="too many params")
        if with_failures and _fails(space, cfg):
            return Trial(number, cfg, TrialStatus.FAILED, None, fidelity, metrics, error="diverged")
        score = toy_score(space, cfg, fidelity)
        metrics.update(
            accuracy=1.0 / score, latency_ms=0.05 * cfg["width"] * cfg["depth"] / cfg["kernel"]
        )
        return Trial(number, cfg, TrialStatus.OK, score, fidelity, metrics)

    return evaluate


# -- driving a strategy ---------------------------------------------------------------------------
def make_strategy(name: str, space: ParamSpace, seed: int, budget: int, **options: Any) -> Strategy:
    """Create ``name`` with those of :data:`FAST_OPTIONS` its constructor accepts, and
    :data:`OBJECTIVES` as ``objectives`` if it takes them; ``options`` (e.g. ``feasible``) are
    passed to every strategy."""
    factory = get_strategy(name)
    try:
        accepted = set(inspect.signature(factory).parameters)
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        accepted = set()
    opts = {k: v for k, v in FAST_OPTIONS.items() if k in accepted}
    if "objectives" in accepted:
        opts["objectives"] = OBJECTIVES
    opts.update(options)
    return create_strategy(name, space, seed=seed, budget=budget, **opts)


def toy_half_feasible(config: Config) -> bool:
    """A feasibility predicate that rejects about half of :class:`ToySpace` (``width * depth
    > 100``, a tighter "max params" than :func:`toy_evaluate`'s): what the compiler passes as
    ``feasible=`` from a student family's analytic parameter count."""
    return toy_params_ratio(config) <= 0.5


@dataclass
class Run:
    """What :func:`drive` did: every suggestion as (key, fidelity), the rounds, the trials."""

    proposals: list[tuple[str, float]]
    rounds: list[list[Trial]]
    trials: list[Trial]


def drive(
    strategy: Strategy,
    evaluate: Callable[[Config, float, int], Trial],
    batches: list[int],
) -> Run:
    """Ask/evaluate/tell with the given batch sizes, as ``search.loop.run_search`` does."""
    space = strategy.space
    run = Run([], [], [])
    for k in batches:
        sugg = strategy.ask(k)
        told = []
        for s in sugg:
            run.proposals.append((space.key(s.config), s.fidelity))
            t = evaluate(s.config, s.fidelity, len(run.trials))
            run.trials.append(t)
            told.append(t)
        run.rounds.append(told)
        strategy.tell(told)
    return run


_BATCHES = [1, 3, 1, 2, 1, 1, 1]  # 10 evaluations, mixed batch sizes
_BUDGET = 12


@dataclass
class _Reference:
    run: Run
    next_proposals: list[tuple[str, float]]
    multi_fidelity: bool


@functools.cache
def reference_run(name: str) -> _Reference:
    """One seeded run of ``name`` on the toy problem (with failures), shared by the checks.

    Cached: model-based strategies fit a GP per ask, and every check that needs a plain run
    can look at the same one (strategies are deterministic, which a check verifies).
    """
    space = ToySpace()
    strat = make_strategy(name, space, seed=11, budget=_BUDGET)
    run = drive(strat, toy_evaluate(space, with_failures=True), _BATCHES)
    nxt = [(space.key(s.config), s.fidelity) for s in strat.ask(2)]
    return _Reference(run, nxt, strat.multi_fidelity)


# -- checks ---------------------------------------------------------------------------------------
def check_proposals_in_space(name: str) -> None:
    """Every suggestion validates against the space; fidelity is in (0, 1] (1.0 if single)."""
    space = ToySpace()
    ref = reference_run(name)
    for t in ref.run.trials:
        assert space.validate(t.config) == space.canonical(t.config), t.config
        assert 0.0 < t.fidelity <= 1.0, t.fidelity
        if not ref.multi_fidelity:
            assert t.fidelity == 1.0, f"single-fidelity {name} asked fidelity {t.fidelity}"
    for _, fid in ref.next_proposals:
        assert 0.0 < fid <= 1.0


def check_ask_before_tell_and_batches(name: str) -> None:
    """``ask`` works before any ``tell``; ``ask(n)`` gives n distinct (config, fidelity)."""
    space = ToySpace()
    strat = make_strategy(name, space, seed=3, budget=_BUDGET)
    first = strat.ask(4)
    assert len(first) == 4
    keys = {(space.key(s.config), s.fidelity) for s in first}
    assert len(keys) == 4, f"{name} repeated a suggestion within one batch"
    # asking again before telling (async loop) must not hand out the pending ones again
    second = strat.ask(2)
    assert not keys & {(space.key(s.config), s.fidelity) for s in second}
    ev = toy_evaluate(space)
    strat.tell([ev(s.config, s.fidelity, i) for i, s in enumerate(first + second)])
    later = strat.ask(3)
    assert len({(space.key(s.config), s.fidelity) for s in later}) == 3


def check_seed_changes_proposals(name: str) -> None:
    """Another seed gives other proposals (a strategy must not ignore its seed)."""
    space = ToySpace()
    ref = reference_run(name)
    other = drive(
        make_strategy(name, space, seed=12, budget=_BUDGET),
        toy_evaluate(space, with_failures=True),
        _BATCHES[:2],
    )
    assert other.proposals != ref.run.proposals[: len(other.proposals)], f"{name} ignores its seed"


def check_deterministic_resume_by_replay(name: str) -> None:
    """A fresh instance with the same seed, replaying the reference run's rounds
    (``ask(len(round))`` then ``tell(recorded)``, as ``search.loop.run_search`` resumes),
    proposes exactly what the original did, round by round, and the same next suggestions.
    This is determinism under a seed and resume in one."""
    space = ToySpace()
    ref = reference_run(name)
    b = make_strategy(name, space, seed=11, budget=_BUDGET)
    for i, chunk in enumerate(ref.run.rounds):
        asked = b.ask(len(chunk))
        assert [(space.key(s.config), s.fidelity) for s in asked] == [
            (space.key(t.config), t.fidelity) for t in chunk
        ], f"{name}: replay diverged at round {i}"
        b.tell(chunk)
    nxt = [(space.key(s.config), s.fidelity) for s in b.ask(2)]
    assert nxt == ref.next_proposals, f"{name}: resumed instance proposes differently"


def check_infeasible_and_failed(name: str) -> None:
    """Infeasible and failed trials do not crash the strategy; it keeps proposing valid
    configs and never re-proposes a failed (config, fidelity)."""
    space = ToySpace()
    ev = toy_evaluate(space, with_failures=True)
    strat = make_strategy(name, space, seed=5, budget=_BUDGET + 5)
    # open with a wall of infeasible trials: nothing ok to model yet
    wall = [
        {"width": 64, "depth": d, "lr": 1e-3, "kernel": 3, "act": "relu", "drop": 0.0}
        for d in (4, 5, 6)
    ]
    strat.tell([ev(c, 1.0, i) for i, c in enumerate(wall)])
    assert all(t.status == TrialStatus.INFEASIBLE for t in strat.trials)
    # the most attractive configs (the toy optimum and a neighbour) failed at every fidelity
    # the strategy might ask: a model-based strategy is drawn there but must not go back
    best = space.from_unit(_OPTIMUM[:4].tolist() + [0.0, 1.0, 0.0, float(_OPTIMUM[7])])
    near = dict(best, drop=0.3)
    fids = (1.0, 0.5, 1 / 3, 1 / 9, 1 / 27, 0.25, 0.2, 0.1)
    failed = {(space.key(c), f) for c in (best, near) for f in fids}
    strat.tell(
        [
            Trial(3 + i, c, TrialStatus.FAILED, None, f, error="diverged")
            for i, (c, f) in enumerate((c, f) for c in (best, near) for f in fids)
        ]
    )
    run = drive(strat, ev, _BATCHES[:5])
    for cfg_key, fid in run.proposals:
        assert (cfg_key, fid) not in failed, f"{name} re-proposed a failed config"
    for t in run.trials:
        space.validate(t.config)
        if t.status == TrialStatus.FAILED:
            failed.add((space.key(t.config), t.fidelity))
    # failures seen during the run never come back afterwards either
    for s in strat.ask(3):
        space.validate(s.config)
        assert (space.key(s.config), s.fidelity) not in failed


def check_no_repeats(name: str) -> None:
    """In a large space, no (config, fidelity) is proposed twice in one run."""
    props = reference_run(name).run.proposals
    assert len(set(props)) == len(props), f"{name} repeated a proposal"


def check_feasibility_predicate(name: str) -> None:
    """``feasible=`` filters candidates before they become proposals.

    * A predicate that accepts everything changes nothing: the reference run again, draw for
      draw (so ``feasible=None`` and an idle predicate cannot perturb a strategy's RNG).
    * A predicate that rejects about half of the space (:func:`toy_half_feasible`): no
      proposal breaks it (and ``infeasible_proposals``, the fallback count, stays 0), and a
      fresh instance replaying the rounds proposes the same (the filter is a pure function).
    """
    space = ToySpace()
    ref = reference_run(name)
    same = make_strategy(name, space, seed=11, budget=_BUDGET, feasible=lambda c: True)
    run = drive(same, toy_evaluate(space, with_failures=True), _BATCHES)
    assert run.proposals == ref.run.proposals, f"{name}: an always-true predicate changed the proposals"

    strat = make_strategy(name, space, seed=11, budget=_BUDGET, feasible=toy_half_feasible)
    run = drive(strat, toy_evaluate(space, with_failures=True), _BATCHES)
    bad = [t.config for t in run.trials if not toy_half_feasible(t.config)]
    assert not bad, f"{name} proposed {len(bad)} configs its feasibility predicate rejects: {bad[:2]}"
    assert strat.infeasible_proposals == 0
    replay = make_strategy(name, space, seed=11, budget=_BUDGET, feasible=toy_half_feasible)
    for i, chunk in enumerate(run.rounds):
        asked = [(space.key(s.config), s.fidelity) for s in replay.ask(len(chunk))]
        assert asked == [(space.key(t.config), t.fidelity) for t in chunk], (
            f"{name}: replay with a feasibility predicate diverged at round {i}"
        )
        replay.tell(chunk)


def check_infeasible_everywhere_is_bounded(name: str) -> None:
    """A predicate that rejects every config does not hang the strategy: ``ask(n)`` still
    returns n distinct best-effort proposals (before and after results arrive, so the
    model-based paths run too), and ``infeasible_proposals`` counts each of them."""
    space = ToySpace()
    strat = make_strategy(name, space, seed=4, budget=_BUDGET, feasible=lambda c: False)
    run = drive(strat, toy_evaluate(space), [4, 2, 3])
    for chunk in run.rounds:
        assert len({(space.key(t.config), t.fidelity) for t in chunk}) == len(chunk)
    assert strat.infeasible_proposals == len(run.proposals)
    later = strat.ask(2)
    assert len({(space.key(s.config), s.fidelity) for s in later}) == 2
    assert strat.infeasible_proposals == len(run.proposals) + 2


CHECKS: list[Callable[[str], None]] = [
    check_proposals_in_space,
    check_ask_before_tell_and_batches,
    check_seed_changes_proposals,
    check_deterministic_resume_by_replay,
    check_infeasible_and_failed,
    check_no_repeats,
    check_feasibility_predicate,
    check_infeasible_everywhere_is_bounded,
]
