"""BOHB's model is the paper's (Falkner et al. 2018; HpBandSter's defaults): N_min = d + 1 points
per KDE, a good set never below N_min, the bandwidth floor 1e-3 and a third of random configs."""

from __future__ import annotations

import numpy as np
import pytest

from kd_compile.search import create_strategy
from kd_compile.search.bohb import BOHB
from kd_compile.search.space import Param, ParamSpace
from kd_compile.search.trial import Trial, TrialStatus
from kd_compile.testing.strategies import ToySpace

PLANE = ParamSpace([Param("x", "float", low=0.0, high=1.0), Param("y", "float", low=0.0, high=1.0)])


def _bohb(space: ParamSpace, **options) -> BOHB:
    strat = create_strategy("bohb", space, seed=0, budget=100, **options)
    assert isinstance(strat, BOHB)
    return strat


def _tell_points(strat: BOHB, points: list[dict], score, fidelity: float = 1.0) -> None:
    strat.tell(
        [Trial(i, p, TrialStatus.OK, score=score(p), fidelity=fidelity) for i, p in enumerate(points)]
    )


def test_defaults_are_the_papers() -> None:
    space = ToySpace()
    strat = _bohb(space)
    assert strat.min_points == len(space.params) + 1  # N_min = d + 1
    assert strat.random_fraction == pytest.approx(1 / 3)
    assert strat.min_bandwidth == pytest.approx(1e-3)
    assert strat.top_n_percent == 15 and strat.bandwidth_factor == 3 and strat.num_samples == 64


def test_a_budget_is_modelled_from_n_min_plus_2_results() -> None:
    strat = _bohb(PLANE)
    n_min = strat.min_points
    assert n_min == 3
    rng = np.random.default_rng(0)
    pts = [PLANE.sample(rng) for _ in range(n_min + 2)]
    _tell_points(strat, pts[:-1], lambda p: p["x"])
    assert strat._kde_data() is None
    _tell_points(strat, pts[-1:], lambda p: p["x"])
    assert strat._kde_data() is not None


@pytest.mark.parametrize("n", [5, 10, 40, 100])
def test_the_good_set_never_shrinks_below_n_min(n: int) -> None:
    strat = _bohb(PLANE)
    n_min = strat.min_points
    rng = np.random.default_rng(n)
    pts = [PLANE.sample(rng) for _ in range(n)]
    _tell_points(strat, pts, lambda p: p["x"])
    good, bad = strat._kde_data()
    assert len(good) == max(n_min, 15 * n // 100)
    assert len(bad) == max(n_min, n - len(good))
    ranked = sorted(p["x"] for p in pts)
    assert sorted(good[:, 0]) == pytest.approx(ranked[: len(good)])  # the best ones
    assert sorted(bad[:, 0]) == pytest.approx(ranked[n - len(bad) :])  # the worst ones


def test_bandwidth_floor_and_normal_reference_rule() -> None:
    strat = _bohb(PLANE)
    same = np.full((6, 2), 0.4)
    assert strat._bandwidths(same) == pytest.approx([1e-3, 1e-3])  # the floor, not a wider clip
    spread = np.random.default_rng(0).random((50, 2))
    expected = 1.06 * spread.std(axis=0) * 50 ** (-1 / 6)  # statsmodels: n ** (-1 / (4 + d))
    assert strat._bandwidths(spread) == pytest.approx(expected)
    cat_space = ParamSpace([Param("c", "cat", choices=("a", "b", "c", "d"))])
    wide = np.array([[0.0], [3.0], [0.0], [3.0]])
    assert _bohb(cat_space)._bandwidths(wide)[0] <= 0.75  # a category's kernel stays a kernel


def test_kde_proposals_follow_the_good_region() -> None:
    strat = _bohb(PLANE)
    rng = np.random.default_rng(1)
    pts = [PLANE.sample(rng) for _ in range(40)]
    _tell_points(strat, pts, lambda p: (p["x"] - 0.2) ** 2 + (p["y"] - 0.7) ** 2)
    good, bad = strat._kde_data()
    draws = [strat._kde_sample(good, bad, taken=set(), rng=np.random.default_rng(s)) for s in range(30)]
    dist = [np.hypot(c["x"] - 0.2, c["y"] - 0.7) for c in draws]
    uniform = [np.hypot(p["x"] - 0.2, p["y"] - 0.7) for p in pts]
    assert np.median(dist) < 0.5 * np.median(uniform)
    assert all(0.0 <= c["x"] <= 1.0 and 0.0 <= c["y"] <= 1.0 for c in draws)  # truncated, not clipped


def test_a_third_of_new_configs_are_random() -> None:
    strat = _bohb(PLANE)
    rng = np.random.default_rng(2)
    _tell_points(strat, [PLANE.sample(rng) for _ in range(30)], lambda p: p["x"])
    calls = {"kde": 0}
    real = strat._kde_sample

    def counted(*args, **kwargs):
        calls["kde"] += 1
        return real(*args, **kwargs)

    strat._kde_sample = counted  # type: ignore[method-assign]
    n = 600
    for _ in range(n):
        strat._new_config(1.0, rng)
    assert calls["kde"] / n == pytest.approx(2 / 3, abs=0.06)
