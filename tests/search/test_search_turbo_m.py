"""TuRBO-M: proposals belong to regions, each region keeps its own trust-region state."""

from __future__ import annotations

import numpy as np
import torch

from kd_compile.search import create_strategy
from kd_compile.search.turbo import Turbo
from kd_compile.search.turbo_m import TurboM
from kd_compile.testing.strategies import ToySpace, toy_evaluate

torch.set_num_threads(1)


def test_each_region_runs_its_design_then_the_regions_share_the_asks() -> None:
    space = ToySpace()
    strat = create_strategy("turbo-m", space, seed=0, budget=12, n_regions=2, gp_maxiter=5, n_candidates=64)
    assert isinstance(strat, TurboM) and isinstance(strat, Turbo)
    assert strat.n_init == 3  # max(3, turbo's n_init (4 at budget 12) // 2 regions)
    ev = toy_evaluate(space)
    for i in range(8):
        (s,) = strat.ask(1)
        strat.tell([ev(s.config, s.fidelity, i)])
    regions = strat.region_trials()
    # region 0 fills its 3-point design first, then region 1 its own; later asks go to either
    assert [t.number for t in regions[0][:3]] == [0, 1, 2]
    assert [t.number for t in regions[1][:3]] == [3, 4, 5]
    assert sorted(t.number for r in regions for t in r) == list(range(8))
    assert len(strat.region_states()) == 2


def test_foreign_trials_are_spread_round_robin() -> None:
    space = ToySpace()
    strat = create_strategy("turbo-m", space, seed=0, n_regions=3)
    ev = toy_evaluate(space)
    cfgs = [space.sample(np.random.default_rng(i)) for i in range(6)]
    strat.tell([ev(c, 1.0, i) for i, c in enumerate(cfgs)])  # told without being asked
    assert [[t.number for t in r] for r in strat.region_trials()] == [[0, 3], [1, 4], [2, 5]]
