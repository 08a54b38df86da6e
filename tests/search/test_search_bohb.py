"""BOHB: successive halving over fidelity, and a new bracket while a rung waits."""

from __future__ import annotations

import pytest
import torch

from kd_compile.search import create_strategy
from kd_compile.testing.strategies import ToySpace, toy_evaluate

torch.set_num_threads(1)


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
