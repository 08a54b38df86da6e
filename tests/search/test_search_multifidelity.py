"""Two-fidelity GP strategies: ``lf-gpr``, ``lf-then-hf`` and ``mfkd`` phases and promotions."""

from __future__ import annotations

import pytest
import torch

from kd_compile.search import create_strategy
from kd_compile.testing.strategies import ToySpace, toy_evaluate

torch.set_num_threads(1)


def _drive_until(strat, ev, done, cap: int = 60) -> list:
    trials: list = []
    while not done(trials) and len(trials) < cap:
        (s,) = strat.ask(1)
        trials.append(ev(s.config, s.fidelity, len(trials)))
        strat.tell([trials[-1]])
    return trials


def _trained(trials, full: bool) -> int:
    return sum(t.status != "infeasible" and (t.fidelity == 1.0) == full for t in trials)


def test_lf_gpr_spends_low_then_checks_favourites_high() -> None:
    space = ToySpace()
    # budget 3 full trainings: 3/4 of the cost at fidelity 1/3 is round(6.75) = 7 evaluations
    strat = create_strategy("lf-gpr", space, seed=0, budget=3, gp_maxiter=8, n_candidates=64)
    ev = toy_evaluate(space)
    trials = _drive_until(strat, ev, lambda ts: sum(t.fidelity == 1.0 for t in ts) >= 2, cap=40)
    fids = [t.fidelity for t in trials]
    first_full = fids.index(1.0)
    assert set(fids[first_full:]) == {1.0} and all(f == pytest.approx(1 / 3) for f in fids[:first_full])
    # infeasible proposals are never trained, so they do not use up the 7 planned trainings
    assert sum(t.status != "infeasible" for t in trials[:first_full]) == 7


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


def test_low_fidelity_must_be_below_one() -> None:
    with pytest.raises(ValueError, match="low_fidelity"):
        create_strategy("lf-gpr", ToySpace(), seed=0, low_fidelity=1.0)
