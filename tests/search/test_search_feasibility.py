"""Feasibility predicates (``feasible=``): strategies drop analytically infeasible candidates
before a proposal exists, stay bounded when nothing is feasible, and change nothing without one."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from kd_compile.errors import UsageError
from kd_compile.search import (
    ComposedSpace,
    Journal,
    Param,
    ParamSpace,
    Trial,
    TrialStatus,
    create_strategy,
    list_strategies,
    run_search,
)
from kd_compile.search.gp import fresh_samples, pick_from_unit, unique_new
from kd_compile.search.turbo import Turbo
from kd_compile.testing.strategies import (
    ToySpace,
    drive,
    make_strategy,
    toy_evaluate,
    toy_half_feasible,
    toy_params_ratio,
    toy_score,
)

torch.set_num_threads(1)

ASKS = [1, 2, 1, 1, 2, 1, 1, 1, 1, 2, 1, 1, 1, 1, 1]  # 15 asks, 18 proposals


def _half_rejecting_evaluate(space: ParamSpace):
    """The toy evaluation with the predicate's limit as its hard constraint (as the compiler's
    ``--max-params`` check is the same count the predicate uses)."""
    ev = toy_evaluate(space)

    def evaluate(config, fidelity, number):
        t = ev(config, fidelity, number)
        if toy_half_feasible(config):
            return t
        return Trial(number, t.config, TrialStatus.INFEASIBLE, None, fidelity, t.metrics, error="too many params")

    return evaluate


# -- the space ------------------------------------------------------------------------------------
def test_toy_predicate_rejects_about_half_of_the_space() -> None:
    space, rng = ToySpace(), np.random.default_rng(0)
    share = np.mean([toy_half_feasible(space.sample(rng)) for _ in range(4000)])
    assert 0.4 < share < 0.6


def test_with_constraint_is_a_copy_of_the_same_space() -> None:
    space = ToySpace()
    assert space.constraint is None and space.feasible({"width": 64, "depth": 6}) is True
    assert space.with_constraint(None) is space
    c = space.with_constraint(toy_half_feasible)
    assert type(c) is ToySpace and c is not space and space.constraint is None  # original untouched
    assert c.params == space.params and c.name == space.name and c.dim == space.dim
    small, big = space.default(), dict(space.default(), width=64, depth=6)
    assert c.feasible(small) and not c.feasible(big)
    assert c.key(big) == space.key(big) and c.validate(big) == space.validate(big)
    # constraints stack: both must hold
    cc = c.with_constraint(lambda cfg: cfg["act"] != "relu")
    assert not cc.feasible(dict(small, act="relu")) and cc.feasible(dict(small, act="gelu"))
    assert not cc.feasible(dict(big, act="gelu")) and c.feasible(dict(small, act="relu"))


def test_predicate_sees_the_canonical_config_and_is_memoised() -> None:
    calls: list[dict] = []

    class Zeroing(ParamSpace):
        def canonical(self, config):
            out = dict(config)
            if out.get("on") is False:
                out["x"] = 0
            return out

    space = Zeroing([Param("on", "cat", choices=(True, False)), Param("x", "int", 0, 9)])

    def pred(cfg):
        calls.append(cfg)
        return cfg["x"] < 5

    c = space.with_constraint(pred)
    assert c.feasible({"on": False, "x": 9})  # canonical: x -> 0
    assert c.feasible({"on": False, "x": 7})  # same key: memoised
    assert calls == [{"on": False, "x": 0}]
    assert not c.feasible({"on": True, "x": 9})
    assert len(calls) == 2


def test_composed_space_keeps_its_parts_under_a_constraint() -> None:
    a = ParamSpace([Param("w", "int", 1, 8)], name="fam")
    b = ParamSpace([Param("t", "float", 1.0, 8.0)], name="kd")
    space = ComposedSpace([a, b]).with_constraint(lambda c: c["w"] * c["t"] <= 8)
    assert isinstance(space, ComposedSpace) and space.parts == [a, b] and space.name == "fam"
    assert space.split({"w": 2, "t": 3.0}) == [{"w": 2}, {"t": 3.0}]
    assert space.feasible({"w": 2, "t": 3.0}) and not space.feasible({"w": 4, "t": 3.0})


def test_a_strategy_constrains_its_own_copy_of_the_space() -> None:
    space = ToySpace()
    s = create_strategy("random", space, seed=0, feasible=toy_half_feasible)
    assert s.space is not space and s.space.constraint is not None and space.constraint is None
    assert create_strategy("random", space, seed=0).space is space
    assert create_strategy("random", space, seed=0, feasible=None).space is space


def test_a_predicate_must_be_callable() -> None:
    with pytest.raises(UsageError):
        create_strategy("random", ToySpace(), seed=0, feasible=1000)


# -- the candidate helpers -------------------------------------------------------------------------
def test_helpers_filter_and_fall_back_within_bounds() -> None:
    space = ToySpace().with_constraint(toy_half_feasible)
    rng = np.random.default_rng(1)
    got = fresh_samples(space, 20, set(), rng)
    assert len(got) == 20 and all(toy_half_feasible(c) for c in got)
    assert len({space.key(c) for c in got}) == 20
    u = np.random.default_rng(2).random((40, space.dim))
    picked = pick_from_unit(space, u, 10, set(), rng)
    assert len(picked) == 10 and all(toy_half_feasible(c) for c in picked)
    configs = [space.from_unit(row) for row in u]
    keep = unique_new(space, configs, set())
    assert keep and all(toy_half_feasible(configs[i]) for i in keep)
    assert len(keep) == sum(toy_half_feasible(c) for c in configs)

    # nothing feasible: n new best-effort configs, bounded
    never = ToySpace().with_constraint(lambda c: False)
    t0 = time.perf_counter()
    got = fresh_samples(never, 5, set(), rng)
    assert len({never.key(c) for c in got}) == 5 and time.perf_counter() - t0 < 5.0
    assert unique_new(never, configs, set()) == []


def test_a_spent_feasible_region_falls_back_to_new_configs_not_repeats() -> None:
    space = ParamSpace([Param("a", "int", 0, 9)]).with_constraint(lambda c: c["a"] < 2)
    strat = create_strategy("random", space, seed=0, feasible=lambda c: c["a"] < 2)
    keys: list[str] = []
    for i in range(4):
        (s,) = strat.ask(1)
        keys.append(space.key(s.config))
        strat.tell([toy_trial(i, s.config)])
    assert {k for k in keys[:2]} == {"a=0", "a=1"}  # the feasible ones first
    assert len(set(keys)) == 4  # then new (infeasible) best-effort ones, counted
    assert strat.infeasible_proposals == 2


def toy_trial(number, config):
    return Trial(number, config, TrialStatus.OK, 1.0 + number)


# -- every strategy --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list_strategies())
def test_no_proposal_breaks_the_predicate_over_15_asks(name: str) -> None:
    space = ToySpace()
    strat = make_strategy(name, space, seed=2, budget=15, feasible=toy_half_feasible)
    run = drive(strat, _half_rejecting_evaluate(space), ASKS)
    assert len(run.proposals) == sum(ASKS)
    rejected = [t for t in run.trials if not toy_half_feasible(t.config)]
    # the fallback (no new feasible config within the bounded tries) never triggers with half
    # of the space feasible; were it to, it would be counted here
    assert strat.infeasible_proposals == len(rejected) == 0
    assert not [t for t in run.trials if t.status == TrialStatus.INFEASIBLE]


@pytest.mark.parametrize("name", ["random", "evolution", "turbo", "bohb"])
def test_always_false_predicate_returns_n_quickly(name: str) -> None:
    space = ToySpace()
    strat = make_strategy(name, space, seed=0, budget=12, feasible=lambda c: False)
    t0 = time.perf_counter()
    run = drive(strat, toy_evaluate(space), [4, 4, 4])
    assert len(set(run.proposals)) == 12
    assert strat.infeasible_proposals == 12
    assert time.perf_counter() - t0 < 30.0


# -- TuRBO's trust region --------------------------------------------------------------------------
def _tr_failures(strat: Turbo) -> tuple[int, int]:
    """(infeasible trials the TR state counted as a failure -- each one a step towards halving
    the TR, or the halving itself --, halvings after an ok trial), replaying TuRBO's state over
    each prefix of the told trials (batch size 1)."""
    from_infeasible = halved_ok = 0
    prev = strat.replay_state(strat.trials[: strat.n_init])[0]
    for i in range(strat.n_init, len(strat.trials)):
        cur, start, _ = strat.replay_state(strat.trials[: i + 1])
        if start <= i:  # no restart at this trial
            counted = cur.failure_counter > prev.failure_counter or cur.length < prev.length
            if strat.trials[i].status == TrialStatus.INFEASIBLE:
                from_infeasible += counted
            else:
                halved_ok += cur.length < prev.length
        prev = cur
    return from_infeasible, halved_ok


def test_turbo_trust_region_is_not_shrunk_by_predicate_rejections() -> None:
    """Bigger is better up to the params limit (as in KD search), so the incumbent sits on the
    boundary and the TR straddles it. Without the predicate, analytically infeasible proposals
    reach TuRBO as infeasible trials and count as TR failures (halving it); with it they never
    become proposals, and only ok trials move the TR."""
    space = ToySpace()

    def evaluate(config, fidelity, number):
        c = space.validate(config)
        if not toy_half_feasible(c):
            return Trial(number, c, TrialStatus.INFEASIBLE, None, fidelity, error="too many params")
        score = toy_score(space, c) - 3.0 * c["width"] * c["depth"] / 100.0
        return Trial(number, c, TrialStatus.OK, score, fidelity)

    opts = dict(n_init=4, failure_tolerance=2)
    plain = make_strategy("turbo", space, seed=0, budget=15, **opts)
    drive(plain, evaluate, [1] * 15)
    with_pred = make_strategy("turbo", space, seed=0, budget=15, feasible=toy_half_feasible, **opts)
    drive(with_pred, evaluate, [1] * 15)

    assert _tr_failures(plain)[0] > 0  # the problem: analytic rejections count as TR failures
    assert not [t for t in with_pred.trials if t.status == TrialStatus.INFEASIBLE]
    assert _tr_failures(with_pred)[0] == 0  # with the predicate only ok trials move the TR
    assert with_pred.infeasible_proposals == 0


# -- the loop ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["random", "turbo"])
def test_search_loop_spends_nothing_on_predicate_rejected_candidates(name: str, tmp_path) -> None:
    space = ToySpace()
    strat = make_strategy(name, space, seed=0, budget=10, feasible=toy_half_feasible)
    journal = Journal(tmp_path / "j.jsonl")
    journal.open({"fingerprint": "x"}, resume=False)
    res = run_search(space, strat, _half_rejecting_evaluate(space), 10, journal)
    assert len(res.trials) == 10
    assert all(t.status == TrialStatus.OK for t in res.trials)
    assert all(toy_params_ratio(t.config) <= 0.5 for t in res.trials)


# -- the screen: a costly predicate, applied to proposals only --------------------------------------
class _CountingScreen:
    """``toy_half_feasible`` as a screen, counting its calls (it must see proposals only)."""

    def __init__(self) -> None:
        self.calls = 0
        self.seen: list[str] = []

    def __call__(self, config) -> bool:
        self.calls += 1
        self.seen.append(ToySpace().key(config))
        return toy_half_feasible(config)


@pytest.mark.parametrize("name", list_strategies())
def test_no_proposal_breaks_the_screen_and_ask_still_returns_n(name: str) -> None:
    space = ToySpace()
    screen = _CountingScreen()
    strat = make_strategy(name, space, seed=2, budget=15, screen=screen)
    run = drive(strat, _half_rejecting_evaluate(space), ASKS)
    assert len(run.proposals) == sum(ASKS)
    assert all(toy_half_feasible(t.config) for t in run.trials)
    assert not [t for t in run.trials if t.status == TrialStatus.INFEASIBLE]
    assert strat.infeasible_proposals == 0
    # screened-out configs are remembered and never told; each config is screened once (memoised)
    told = {space.key(t.config) for t in strat.trials}
    assert strat.screened > 0 and not (strat.excluded_keys() & told)
    assert len(set(screen.seen)) == len(screen.seen) and told <= set(screen.seen)


def test_the_screen_is_lazy_and_replays_the_same_proposals() -> None:
    """TuRBO scores hundreds of candidates an ask; the screen sees only what it proposes. Replayed
    round by round (as the search loop resumes), a fresh strategy proposes the same configs."""
    space = ToySpace()
    runs = []
    for _ in range(2):
        screen = _CountingScreen()
        strat = make_strategy("turbo", space, seed=3, budget=15, screen=screen)
        runs.append((drive(strat, _half_rejecting_evaluate(space), [1] * 12), screen, strat))
    (a, screen_a, strat_a), (b, _, _) = runs
    assert a.proposals == b.proposals
    assert screen_a.calls < strat_a.n_candidates  # only proposals were screened


def test_an_always_false_screen_falls_back_within_bounds() -> None:
    space = ToySpace()
    strat = make_strategy("random", space, seed=0, budget=8, screen=lambda c: False)
    t0 = time.perf_counter()
    (got,) = [strat.ask(2)]
    assert len(got) == 2 and strat.infeasible_proposals == 2
    assert time.perf_counter() - t0 < 10.0


def test_a_screen_must_be_callable() -> None:
    with pytest.raises(UsageError):
        create_strategy("random", ToySpace(), seed=0, screen=1)
