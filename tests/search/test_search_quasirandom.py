"""Space-filling designs: ``lhs`` blocks are stratified, ``sobol`` covers the cube."""

from __future__ import annotations

import numpy as np

from kd_compile.search import Param, ParamSpace, create_strategy


def _float_space(n: int) -> ParamSpace:
    return ParamSpace([Param(f"x{i}", "float", 0.0, 1.0) for i in range(n)], name="box")


def test_lhs_block_is_stratified() -> None:
    space = _float_space(2)
    strat = create_strategy("lhs", space, seed=4, budget=8)
    xs = np.asarray([[s.config["x0"], s.config["x1"]] for s in strat.ask(8)])
    for j in range(2):  # one point in each of the 8 strata of every coordinate
        assert sorted(np.floor(xs[:, j] * 8).astype(int)) == list(range(8))


def test_lhs_next_block_is_a_new_design() -> None:
    space = _float_space(1)
    strat = create_strategy("lhs", space, seed=4, block_size=4)
    xs = [s.config["x0"] for s in strat.ask(8)]
    for block in (xs[:4], xs[4:]):
        assert sorted(np.floor(np.asarray(block) * 4).astype(int)) == [0, 1, 2, 3]
    assert xs[:4] != xs[4:]


def test_sobol_covers_the_cube_better_than_chance() -> None:
    space = _float_space(1)
    xs = sorted(s.config["x0"] for s in create_strategy("sobol", space, seed=1).ask(16))
    assert max(np.diff([0.0, *xs, 1.0])) < 0.15  # scrambled Sobol: no big holes
