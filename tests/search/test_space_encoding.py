"""Bin-centre encoding of integers and ordered choices: exact round trips, symmetric moves.

A trust region (TuRBO) or a mutation (evolution) moves a coordinate by a small step around the
encoding of the incumbent; if a value were encoded at an edge of its bin, a step one way would
change the value and the same step the other way would not.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from kd_compile.search import Param, ParamSpace

DISCRETE = [
    Param("i", "int", 2, 9),
    Param("i_one", "int", 5, 5),
    Param("i_wide", "int", -3, 40),
    Param("ilog", "int", 1, 1000, log=True),
    Param("ilog_small", "int", 3, 12, log=True),
    Param("ch", "choice", choices=(16, 32, 64, 128, 256)),
    Param("ch_two", "choice", choices=("a", "b")),
    Param("one", "choice", choices=("only",)),
]
CONTINUOUS = [
    Param("f", "float", -1.0, 3.0),
    Param("flog", "float", 1e-4, 1e-1, log=True),
]
CATEGORICAL = [Param("cat", "cat", choices=("relu", "gelu", "silu")), Param("flag", "cat", choices=(False, True))]


def _all_values(p: Param) -> list:
    """Every value of a discrete parameter."""
    if p.kind in ("choice", "cat"):
        return list(p.choices)
    return list(range(int(p.low), int(p.high) + 1))


def _bin_edges(p: Param, v) -> tuple[float, float]:
    """The [lo, hi) interval of [0, 1] that decodes to ``v``, found by bisection on decode."""
    u0 = p.encode(v)[0]

    def edge(direction: float) -> float:
        inside, outside = u0, (1.0 if direction > 0 else 0.0)
        if p.decode([outside]) == v:
            return outside
        for _ in range(60):
            mid = (inside + outside) / 2
            inside, outside = (mid, outside) if p.decode([mid]) == v else (inside, mid)
        return (inside + outside) / 2

    return edge(-1.0), edge(1.0)


@pytest.mark.parametrize("p", DISCRETE + CATEGORICAL, ids=lambda p: p.name)
def test_every_discrete_value_round_trips_exactly(p: Param) -> None:
    for v in _all_values(p):
        u = p.encode(v)
        assert len(u) == p.width and all(0.0 <= x <= 1.0 for x in u)
        back = p.decode(u)
        assert back == v and type(back) is type(v)


@pytest.mark.parametrize("p", CONTINUOUS, ids=lambda p: p.name)
def test_floats_round_trip(p: Param) -> None:
    for v in np.linspace(p.low, p.high, 11) if not p.log else np.geomspace(p.low, p.high, 11):
        assert p.decode(p.encode(float(v))) == pytest.approx(float(v), rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("p", DISCRETE, ids=lambda p: p.name)
def test_each_value_encodes_at_the_centre_of_its_bin(p: Param) -> None:
    for v in _all_values(p):
        lo, hi = _bin_edges(p, v)
        assert p.encode(v)[0] == pytest.approx((lo + hi) / 2, abs=1e-9)


@pytest.mark.parametrize("p", [p for p in DISCRETE if p.cardinality >= 3], ids=lambda p: p.name)
def test_a_small_step_from_a_middle_value_reaches_both_neighbours(p: Param) -> None:
    values = _all_values(p)
    i = len(values) // 2
    mid = values[i]
    u = p.encode(mid)[0]
    lo, hi = _bin_edges(p, mid)
    # just past the wider half of the bin: the same step up and down leaves it on both sides
    step = max(u - lo, hi - u) * 1.01
    assert p.decode([u + step]) == values[i + 1]
    assert p.decode([u - step]) == values[i - 1]
    # and a step inside the bin changes nothing either way
    inner = min(u - lo, hi - u) * 0.99
    assert p.decode([u + inner]) == mid and p.decode([u - inner]) == mid


@pytest.mark.parametrize("p", [p for p in DISCRETE if p.kind == "choice" or not p.log], ids=lambda p: p.name)
def test_linear_bins_are_symmetric_about_the_encoding(p: Param) -> None:
    n = p.cardinality
    for v in _all_values(p):
        lo, hi = _bin_edges(p, v)
        u = p.encode(v)[0]
        assert u - lo == pytest.approx(hi - u, abs=1e-9)
        assert hi - lo == pytest.approx(1.0 / n, abs=1e-9)


def test_log_int_bins_are_centred_in_log_space() -> None:
    p = Param("w", "int", 4, 64, log=True)
    span = math.log(65) - math.log(4)
    for k in (4, 5, 16, 63, 64):
        expected = (math.log(k * (k + 1)) / 2 - math.log(4)) / span
        assert p.encode(k)[0] == pytest.approx(expected)


def test_space_round_trip_is_exact_for_every_discrete_combination() -> None:
    space = ParamSpace([Param("a", "int", 0, 3), Param("b", "choice", choices=(1, 2, 4)), *CATEGORICAL])
    rng = np.random.default_rng(0)
    for _ in range(50):
        config = space.sample(rng)
        assert space.from_unit(space.to_unit(config)) == config
