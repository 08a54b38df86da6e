"""The model-free space: parameter encodings, sampling, validation, keys, composed spaces."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kd_compile.errors import UsageError
from kd_compile.search import ComposedSpace, Config, Param, ParamSpace

EVERY_KIND = [
    Param("i", "int", 2, 9, default=4),
    Param("ilog", "int", 1, 1000, log=True, default=10),
    Param("f", "float", -1.0, 3.0, default=0.0),
    Param("flog", "float", 1e-4, 1e-1, log=True, default=1e-2),
    Param("ch", "choice", choices=(16, 32, 64), default=32),
    Param("one", "choice", choices=("only",), default="only"),
    Param("cat", "cat", choices=("relu", "gelu", "silu"), default="gelu"),
    Param("flag", "cat", choices=(False, True), default=False),
]


def _values(p: Param) -> list:
    if p.kind in ("choice", "cat"):
        return list(p.choices)
    if p.kind == "int":
        return sorted({int(p.low), int(p.high), *np.linspace(p.low, p.high, 7).astype(int).tolist()})
    return [p.low, p.high, *np.linspace(p.low, p.high, 5)[1:-1].tolist()]


# -- parameters -----------------------------------------------------------------------------------
@pytest.mark.parametrize("p", EVERY_KIND, ids=lambda p: p.name)
def test_encode_decode_round_trip_for_every_kind(p: Param) -> None:
    for v in _values(p):
        u = p.encode(v)
        assert len(u) == p.width and all(0.0 <= x <= 1.0 for x in u)
        back = p.decode(u)
        if p.kind == "float":
            assert back == pytest.approx(v, rel=1e-12, abs=1e-15)
        else:
            assert back == v and type(back) is type(v)
        assert p.contains(back)


def test_widths_and_cardinalities() -> None:
    by = {p.name: p for p in EVERY_KIND}
    assert [p.width for p in EVERY_KIND] == [1, 1, 1, 1, 1, 1, 3, 2]
    assert by["i"].cardinality == 8 and by["ch"].cardinality == 3 and math.isinf(by["f"].cardinality)


def test_int_bins_have_equal_shares() -> None:
    p = Param("d", "int", 0, 3)
    assert [p.decode([x]) for x in (0.0, 0.24, 0.26, 0.49, 0.51, 0.74, 0.76, 1.0)] == [0, 0, 1, 1, 2, 2, 3, 3]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "bool"},
        {"kind": "int", "low": 3, "high": 2},
        {"kind": "float", "low": None, "high": 1.0},
        {"kind": "float", "low": 0.0, "high": 1.0, "log": True},
        {"kind": "cat", "choices": ()},
    ],
)
def test_bad_parameters_are_rejected(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        Param("x", **kwargs)


def test_contains_is_strict_about_ints() -> None:
    p = Param("n", "int", 0, 5)
    assert p.contains(3) and p.contains(np.int64(3))
    assert not p.contains(True) and not p.contains(2.5) and not p.contains(6) and not p.contains("3")


# -- spaces ---------------------------------------------------------------------------------------
def test_unit_round_trip_over_a_space_with_every_kind() -> None:
    space = ParamSpace(EVERY_KIND, name="all")
    assert space.dim == 11 and space.param_names == [p.name for p in EVERY_KIND]
    rng = np.random.default_rng(0)
    for _ in range(50):
        c = space.sample(rng)
        assert space.validate(c) == c
        assert space.from_unit(space.to_unit(c)) == c
        assert all(type(v) in (int, float, str, bool) for v in c.values())  # JSON-ready, no numpy
    with pytest.raises(ValueError):
        space.from_unit(np.zeros(space.dim - 1))


def test_random_unit_is_one_hot_for_categoricals_and_seeded() -> None:
    space = ParamSpace(EVERY_KIND)
    u = space.random_unit(np.random.default_rng(3))
    assert u.shape == (space.dim,) and ((u >= 0) & (u <= 1)).all()
    assert u[6:9].sum() == 1.0 and set(u[6:9]) <= {0.0, 1.0} and u[9:11].sum() == 1.0
    assert np.array_equal(u, space.random_unit(np.random.default_rng(3)))
    assert space.sample(np.random.default_rng(5)) == space.sample(np.random.default_rng(5))


def test_validate_default_key_and_describe() -> None:
    space = ParamSpace(EVERY_KIND)
    d = space.default()
    assert d == {p.name: p.default for p in EVERY_KIND}
    assert space.validate({**d, "extra": 1}) == d  # keys outside the space are dropped
    with pytest.raises(UsageError, match="lacks"):
        space.validate({"i": 3})
    with pytest.raises(UsageError, match="out of the space"):
        space.validate({**d, "ch": 48})
    assert space.key(d) == space.key(dict(reversed(list(d.items()))))  # order does not matter
    assert space.key(d) != space.key({**d, "i": 5})
    assert space.describe(d) == space.key(d)
    assert space.to_dict()["params"][0] == EVERY_KIND[0].to_dict()


def test_duplicate_parameter_names_are_rejected() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        ParamSpace([Param("a", "int", 0, 1), Param("a", "float", 0.0, 1.0)])


# -- composed spaces ------------------------------------------------------------------------------
class _Stages(ParamSpace):
    """``width`` means nothing with ``depth == 0``: canonical sets it to its default."""

    def __init__(self) -> None:
        super().__init__(
            [Param("depth", "int", 0, 3, default=1), Param("width", "choice", choices=(8, 16), default=8)], "stages"
        )

    def canonical(self, config: Config) -> Config:
        c = {k: config[k] for k in self.param_names if k in config}
        if c.get("depth") == 0:
            c["width"] = 8
        return c

    def describe(self, config: Config) -> str:
        return f"d{config['depth']}w{config['width']}"


def _kd() -> ParamSpace:
    return ParamSpace(
        [Param("tau", "float", 1.0, 8.0, default=4.0), Param("alpha", "float", 0.1, 0.9, default=0.7)], "kd"
    )


def test_composed_space_keeps_the_parts_order_and_encoding() -> None:
    stages, kd = _Stages(), _kd()
    space = ComposedSpace([stages, kd])
    assert space.name == "stages" and ComposedSpace([stages, kd], name="x").name == "x"
    assert space.param_names == ["depth", "width", "tau", "alpha"] and space.dim == 4
    c = {"depth": 2, "width": 16, "tau": 2.0, "alpha": 0.5}
    assert np.array_equal(space.to_unit(c), np.r_[stages.to_unit(c), kd.to_unit(c)])
    assert space.from_unit(space.to_unit(c)) == pytest.approx(c)


def test_composed_canonical_split_key_and_describe() -> None:
    space = ComposedSpace([_Stages(), _kd()])
    a = {"depth": 0, "width": 16, "tau": 2.0, "alpha": 0.5, "other": 1}
    b = {"alpha": 0.5, "tau": 2.0, "width": 8, "depth": 0}
    # each part canonicalises its own keys; keys of no part are dropped
    assert space.canonical(a) == {"depth": 0, "width": 8, "tau": 2.0, "alpha": 0.5}
    assert space.key(a) == space.key(b)
    assert space.key(a) != space.key({**b, "tau": 3.0})
    assert space.split(space.canonical(a)) == [{"depth": 0, "width": 8}, {"tau": 2.0, "alpha": 0.5}]
    assert space.describe(b) == "d0w8"  # the first part's description
    rng = np.random.default_rng(1)
    for _ in range(20):
        c = space.sample(rng)
        assert space.validate(c) == c and space.canonical(c) == c


def test_composed_space_needs_parts_with_distinct_names() -> None:
    with pytest.raises(ValueError):
        ComposedSpace([])
    with pytest.raises(ValueError, match="duplicate"):
        ComposedSpace([_kd(), _kd()])
