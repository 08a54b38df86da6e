"""Regularised evolution: ``mutate`` changes one parameter; the tournament picks good parents."""

from __future__ import annotations

import numpy as np

from kd_compile.search import Param, ParamSpace, create_strategy
from kd_compile.search.evolution import mutate
from kd_compile.testing.strategies import ToySpace, toy_evaluate


def test_mutate_changes_exactly_one_parameter_and_stays_in_the_space() -> None:
    space = ToySpace()
    rng = np.random.default_rng(0)
    base = space.default()
    for _ in range(20):
        child = mutate(space, base, rng)
        assert sum(child[k] != base[k] for k in base) == 1
        space.validate(child)


def test_mutate_leaves_a_space_without_choices_alone() -> None:
    space = ParamSpace([Param("a", "int", 3, 3), Param("b", "choice", choices=("x",))])
    cfg = space.default()
    assert mutate(space, cfg, np.random.default_rng(0)) == cfg


def test_tournament_over_the_whole_population_picks_the_best_parent() -> None:
    space = ToySpace()
    strat = create_strategy("evolution", space, seed=0, budget=12, population_size=4, sample_size=4)
    ev = toy_evaluate(space)
    first = strat.ask(4)
    trials = [ev(s.config, 1.0, i) for i, s in enumerate(first)]
    strat.tell(trials)
    best = min((t for t in trials if t.ok), key=lambda t: t.score)
    (child,) = strat.ask(1)
    # sample_size = population: the tournament sees every member
    assert sum(child.config[k] != best.config[k] for k in best.config) == 1
