"""Every registered strategy passes the shared conformance suite."""

from __future__ import annotations

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
