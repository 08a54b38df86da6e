"""Two-fidelity GP strategies: ``lf-gpr`` (Algorithm 1), ``lf-gpr-hybrid``, ``lf-then-hf`` and ``mfkd``."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from kd_compile.errors import UsageError
from kd_compile.search import Journal, create_strategy, run_search
from kd_compile.testing.strategies import ToySpace, toy_evaluate, toy_score

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


def test_lf_gpr_hybrid_spends_low_then_checks_favourites_high() -> None:
    space = ToySpace()
    # budget 3 full trainings: 3/4 of the cost at fidelity 1/3 is round(6.75) = 7 evaluations
    strat = create_strategy("lf-gpr-hybrid", space, seed=0, budget=3, gp_maxiter=8, n_candidates=64)
    ev = toy_evaluate(space)
    trials = _drive_until(strat, ev, lambda ts: sum(t.fidelity == 1.0 for t in ts) >= 2, cap=40)
    fids = [t.fidelity for t in trials]
    first_full = fids.index(1.0)
    assert set(fids[first_full:]) == {1.0} and all(f == pytest.approx(1 / 3) for f in fids[:first_full])
    # infeasible proposals are never trained, so they do not use up the 7 planned trainings
    assert sum(t.status != "infeasible" for t in trials[:first_full]) == 7


def test_lf_gpr_is_algorithm_1_low_fidelity_only_then_the_gp_argmax(tmp_path) -> None:
    """Trofimov et al.'s Algorithm 1: the whole budget at low fidelity, the result the argmax of
    a GP on those scores, which may be a config the search never trained."""
    space = ToySpace()
    strat = create_strategy("lf-gpr", space, seed=0, budget=3, gp_maxiter=8, n_candidates=64)
    journal = Journal(tmp_path / "j.jsonl")
    journal.open({"fingerprint": "x"}, resume=False)
    res = run_search(space, strat, toy_evaluate(space), 3, journal)
    assert all(t.fidelity == pytest.approx(1 / 3) for t in res.trials)
    assert sum(t.status != "infeasible" for t in res.trials) == 9  # 3 trainings' cost at 1/3
    rec = res.recommendation
    assert rec is not None and rec.by.startswith("lf-gpr: the argmax of a GP")
    assert space.feasible(rec.config)
    # the argmax is the GP's: the best posterior mean among the measured configs and candidates,
    # not the best measured score (here they differ), and the same trials give the same argmax
    again = strat.recommend()
    assert again is not None and space.key(again.config) == space.key(rec.config)
    measured = {space.key(t.config): t for t in res.trials}
    if space.key(rec.config) in measured:
        assert rec.trial is measured[space.key(rec.config)]
    else:
        assert rec.trial is None and rec.trained_at is None


def test_lf_gpr_recommendation_beats_the_best_noisy_low_fidelity_score_on_average() -> None:
    """The GP pools neighbouring noisy low-fidelity scores, so over seeds its argmax's true
    full-fidelity value beats that of the config with the best single noisy score."""
    space = ToySpace()
    base = toy_evaluate(space)

    def noisy(config, fidelity, number):
        t = base(config, fidelity, number)
        if t.ok:  # seeded noise, fixed per trial number: one noisy proxy training
            t = dataclasses.replace(t, score=t.score + float(np.random.default_rng(number).normal(0.0, 0.4)))
        return t

    gp, raw = [], []
    for seed in range(6):
        strat = create_strategy("lf-gpr", space, seed=seed, budget=8, gp_maxiter=30, n_candidates=256)
        trials = _drive_until(strat, noisy, lambda ts: len(ts) >= 24, cap=24)
        rec = strat.recommend()
        best_measured = min((t for t in trials if t.ok), key=lambda t: t.score)
        gp.append(toy_score(space, rec.config))
        raw.append(toy_score(space, best_measured.config))
    assert np.mean(gp) < np.mean(raw)


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
    # then MF-KD's rule: every point at full fidelity, from the co-kriging model (rho fitted)
    more = _drive_until(strat, ev, lambda ts: len(ts) >= 4)
    assert {t.fidelity for t in more} == {1.0} and strat.rho is not None


def test_mfkd_with_gamma_goes_back_to_low_fidelity_where_the_model_is_unsure() -> None:
    space = ToySpace()
    strat = create_strategy(
        "mfkd", space, seed=0, budget=20, n_init=3, n_high_init=2, gamma=0.05, gp_maxiter=8, n_candidates=64
    )
    ev = toy_evaluate(space)
    trials = _drive_until(strat, ev, lambda ts: len(ts) >= 14, cap=14)
    after = trials[5:]
    assert any(t.fidelity < 1 for t in after) and any(t.fidelity == 1.0 for t in after)


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
    with pytest.raises(UsageError, match=r"low_fidelity=1.0 must be in \(0, 1\)"):
        create_strategy("lf-gpr", ToySpace(), seed=0, low_fidelity=1.0)


def test_lf_gpr_screens_its_argmax_lazily_best_first() -> None:
    """The argmax must pass the strategy's screen; the screen (costly) is applied to the GP's
    ranking best first, not to the whole candidate set."""
    space = ToySpace()
    calls: list[str] = []
    first = create_strategy("lf-gpr", space, seed=0, budget=3, gp_maxiter=8, n_candidates=64)
    trials = _drive_until(first, toy_evaluate(space), lambda ts: len(ts) >= 9, cap=9)
    favourite = space.key(first.recommend().config)

    def screen(config) -> bool:
        calls.append(space.key(config))
        return space.key(config) != favourite

    strat = create_strategy("lf-gpr", space, seed=0, budget=3, gp_maxiter=8, n_candidates=64, screen=screen)
    strat.tell(trials)
    calls.clear()
    rec = strat.recommend()
    assert space.key(rec.config) != favourite and calls[0] == favourite and len(calls) == 2
