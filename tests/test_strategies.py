"""Every registered strategy passes the shared conformance suite."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kd_compile.search.base import create_strategy, list_strategies
from kd_compile.testing.strategies import CHECKS, ToySpace, toy_evaluate, toy_score

torch.set_num_threads(1)

BUILTINS = {"random", "turbo"}


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
@pytest.mark.parametrize("name", list_strategies())
def test_conformance(name: str, check) -> None:
    check(name)


def test_builtins_registered() -> None:
    assert BUILTINS <= set(list_strategies())


def test_toy_space_builds_and_objective_prefers_optimum() -> None:
    space = ToySpace()
    cfg = space.default()
    model = space.build(cfg)
    out = model(torch.zeros(2, *space.input_shape))
    assert out.shape == (2, space.num_classes)
    good = space.from_unit([0.35, 0.6, 0.7, 0.5, 0.0, 1.0, 0.0, 0.25])
    assert good["act"] == "gelu"
    assert toy_score(space, good) < toy_score(space, dict(cfg, act="relu", width=64))
    # low fidelity is biased upwards but correlated
    assert toy_score(space, good, 1 / 3) > toy_score(space, good)


def test_toy_evaluate_marks_infeasible() -> None:
    space = ToySpace()
    ev = toy_evaluate(space)
    big = dict(space.default(), width=64, depth=6)
    t = ev(big, 1.0, 0)
    assert t.status == "infeasible" and t.score is None and t.metrics["params_ratio"] > 1


def test_random_dedups_small_space() -> None:
    """In a space with 6 configs, random proposes each once before repeating any."""
    from kd_compile.students.base import Param

    space = ToySpace(params=[Param("a", "int", 0, 1), Param("b", "cat", choices=("x", "y", "z"))])
    strat = create_strategy("random", space, seed=0)
    keys = []
    for _ in range(6):
        (s,) = strat.ask(1)
        keys.append(space.key(s.config))
        strat.tell([toy_like(space, s.config, len(keys))])
    assert len(set(keys)) == 6
    # once the space is spent it still answers (repeats allowed)
    assert len(strat.ask(2)) == 2


def toy_like(space, config, number):
    from kd_compile.search.base import Trial

    return Trial(number, config, "ok", float(config["a"]) + 1.0)


def test_unknown_option_is_a_usage_error() -> None:
    from kd_compile.errors import UsageError

    with pytest.raises(UsageError):
        create_strategy("random", ToySpace(), seed=0, bogus=1)


# -- strategy-specific behaviour --------------------------------------------------------------------
def _float_space(n: int = 1) -> ToySpace:
    from kd_compile.students.base import Param

    return ToySpace(params=[Param(f"x{i}", "float", 0.0, 1.0) for i in range(n)])


def test_lhs_block_is_stratified() -> None:
    space = _float_space(2)
    strat = create_strategy("lhs", space, seed=4, budget=8)
    xs = np.asarray([[s.config["x0"], s.config["x1"]] for s in strat.ask(8)])
    for j in range(2):  # one point in each of the 8 strata of every coordinate
        assert sorted(np.floor(xs[:, j] * 8).astype(int)) == list(range(8))


def test_sobol_covers_the_cube_better_than_chance() -> None:
    space = _float_space(1)
    xs = sorted(s.config["x0"] for s in create_strategy("sobol", space, seed=1).ask(16))
    assert max(np.diff([0.0, *xs, 1.0])) < 0.15  # scrambled Sobol: no big holes


def test_evolution_mutates_one_parameter_of_a_good_parent() -> None:
    from kd_compile.search.more import mutate

    space = ToySpace()
    rng = np.random.default_rng(0)
    base = space.default()
    for _ in range(20):
        child = mutate(space, base, rng)
        assert sum(child[k] != base[k] for k in base) == 1
        space.validate(child)
    strat = create_strategy("evolution", space, seed=0, budget=12, population_size=4, sample_size=4)
    ev = toy_evaluate(space)
    first = strat.ask(4)
    trials = [ev(s.config, 1.0, i) for i, s in enumerate(first)]
    strat.tell(trials)
    best = min((t for t in trials if t.ok), key=lambda t: t.score)
    (child,) = strat.ask(1)
    # tournament over the whole population (sample_size = population) picks the best parent
    assert sum(child.config[k] != best.config[k] for k in best.config) == 1


def test_bohb_runs_successive_halving() -> None:
    space = ToySpace()
    strat = create_strategy("bohb", space, seed=0, budget=30)
    ev = toy_evaluate(space)
    rung0 = strat.ask(9)
    assert all(s.fidelity == pytest.approx(1 / 9) for s in rung0)
    told = [ev(s.config, s.fidelity, i) for i, s in enumerate(rung0)]
    strat.tell(told)
    promoted = strat.ask(3)
    assert all(s.fidelity == pytest.approx(1 / 3) for s in promoted)
    ok = sorted((t for t in told if t.ok), key=lambda t: t.score)[:3]
    assert [space.key(s.config) for s in promoted] == [space.key(t.config) for t in ok]


def test_bohb_starts_next_bracket_while_a_rung_waits() -> None:
    space = ToySpace()
    strat = create_strategy("bohb", space, seed=0, budget=30)
    first = strat.ask(10)  # 9 fill bracket s=2; the 10th cannot be a promotion yet
    assert first[9].fidelity == pytest.approx(1 / 3)  # bracket s=1 starts at 1/3
    assert len(strat.brackets) == 2


def test_lf_gpr_spends_low_then_checks_favourites_high() -> None:
    space = ToySpace()
    # budget 3 full trainings: 3/4 of the cost at fidelity 1/3 is round(6.75) = 7 evaluations
    strat = create_strategy("lf-gpr", space, seed=0, budget=3, gp_maxiter=8, n_candidates=64)
    ev = toy_evaluate(space)
    trials = []
    while sum(t.fidelity == 1.0 for t in trials) < 2 and len(trials) < 40:
        (s,) = strat.ask(1)
        trials.append(ev(s.config, s.fidelity, len(trials)))
        strat.tell([trials[-1]])
    fids = [t.fidelity for t in trials]
    first_full = fids.index(1.0)
    assert set(fids[first_full:]) == {1.0} and all(f == pytest.approx(1 / 3) for f in fids[:first_full])
    # infeasible proposals are never trained, so they do not use up the 7 planned trainings
    assert sum(t.status != "infeasible" for t in trials[:first_full]) == 7


def _drive_until(strat, ev, done, cap: int = 60) -> list:
    trials: list = []
    while not done(trials) and len(trials) < cap:
        (s,) = strat.ask(1)
        trials.append(ev(s.config, s.fidelity, len(trials)))
        strat.tell([trials[-1]])
    return trials


def _trained(trials, full: bool) -> int:
    return sum(t.status != "infeasible" and (t.fidelity == 1.0) == full for t in trials)


def test_mfkd_warm_up_then_both_fidelities() -> None:
    space = ToySpace()
    strat = create_strategy(
        "mfkd", space, seed=0, budget=20, n_init=4, n_high_init=2, gp_maxiter=8, n_candidates=64
    )
    ev = toy_evaluate(space)
    # warm-up: 4 trainings at 1/3, then 2 at full fidelity (infeasible proposals do not count)
    trials = _drive_until(strat, ev, lambda ts: _trained(ts, full=True) >= 2)
    fids = [t.fidelity for t in trials]
    k = fids.index(1.0)
    assert all(f == pytest.approx(1 / 3) for f in fids[:k]) and set(fids[k:]) == {1.0}
    assert _trained(trials[:k], full=False) == 4
    trials += _drive_until(strat, ev, lambda ts: len(ts) >= 6)
    assert all(t.fidelity == pytest.approx(1 / 3) or t.fidelity == 1.0 for t in trials)


def test_lf_then_hf_seeds_high_fidelity_with_best_low() -> None:
    space = ToySpace()
    strat = create_strategy(
        "lf-then-hf", space, seed=0, budget=4, n_init=4, n_seeds=2, gp_maxiter=8, n_candidates=64
    )
    ev = toy_evaluate(space)
    trials = _drive_until(strat, ev, lambda ts: _trained(ts, full=True) >= 2)
    low = [t for t in trials if t.fidelity < 1]
    high = [t for t in trials if t.fidelity == 1.0]
    # half of 4 trainings' cost at 1/3: 6 trainings (infeasible proposals are not trainings)
    assert _trained(low, full=False) == 6 and len(high) == 2
    assert trials.index(high[0]) > trials.index(low[-1])
    best_low = sorted((t for t in low if t.ok), key=lambda t: t.score)[:2]
    assert [space.key(t.config) for t in high] == [space.key(t.config) for t in best_low]


def test_mobo_pareto_front() -> None:
    from kd_compile.search.base import Trial

    space = ToySpace()
    strat = create_strategy("mobo", space, seed=0)
    cfg = space.default()
    m = lambda a, lat, p: {"accuracy": a, "latency_ms": lat, "params": p}
    strat.tell(
        [
            Trial(0, cfg, "ok", 1.0, metrics=m(0.9, 2.0, 1e6)),
            Trial(1, cfg, "ok", 1.0, metrics=m(0.8, 1.0, 1e6)),
            Trial(2, cfg, "ok", 1.0, metrics=m(0.8, 2.0, 1e6)),  # dominated by 0 and 1
            Trial(3, cfg, "infeasible", metrics={"params": 5e6}),
        ]
    )
    assert [t.number for t in strat.pareto_front()] == [0, 1]
    configs, y = strat.objectives()
    assert len(configs) == 4 and y[3, 0] < y[:3, 0].min()  # infeasible: accuracy below all
    assert y[3, 2] == pytest.approx(-np.log(5e6)) and y[3, 1] == pytest.approx(-np.log(2.0))


@pytest.mark.parametrize("name", ["random", "lf-gpr"])
def test_search_loop_budget_is_training_cost(name: str, tmp_path) -> None:
    from kd_compile.search.journal import Journal
    from kd_compile.search.loop import run_search

    space = ToySpace()
    opts = {"gp_maxiter": 8, "n_candidates": 64} if name == "lf-gpr" else {}
    strat = create_strategy(name, space, seed=0, budget=3, **opts)
    journal = Journal(tmp_path / "j.jsonl")
    journal.open({"fingerprint": "x"}, resume=False)
    res = run_search(space, strat, toy_evaluate(space), 3, journal)
    trained = [t for t in res.trials if t.status != "infeasible"]
    cost = sum(t.fidelity for t in trained)
    # the loop stops once 3 full trainings' worth is spent, and not before
    assert 3 - 1e-9 <= cost < 3 + 1
    if name == "random":
        assert len(trained) == 3
    else:  # 7 trainings at 1/3 (infeasible proposals cost nothing and do not count), then full
        fids = [t.fidelity for t in res.trials]
        first_full = fids.index(1.0)
        assert set(fids[first_full:]) == {1.0}
        low = res.trials[:first_full]
        assert sum(t.status != "infeasible" for t in low) == 7
        assert any(t.status == "infeasible" for t in low)  # the toy space has some
