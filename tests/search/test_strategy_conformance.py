"""Every registered strategy passes the shared conformance suite; the registry's public API."""

from __future__ import annotations

import pytest
import torch

from kd_compile.errors import UsageError
from kd_compile.search import Param, Strategy, Trial, create_strategy, get_strategy, list_strategies
from kd_compile.testing.strategies import CHECKS, ToySpace

torch.set_num_threads(1)

BUILTINS = {
    "bohb", "evolution", "lf-gpr", "lf-gpr-hybrid", "lf-then-hf", "lhs", "mfkd", "mobo", "random", "sobol", "turbo",
    "turbo-m",
}  # fmt: skip


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
@pytest.mark.parametrize("name", list_strategies())
def test_conformance(name: str, check) -> None:
    check(name)


def test_builtins_registered_on_import() -> None:
    assert BUILTINS <= set(list_strategies())
    for name in BUILTINS:
        cls = get_strategy(name)
        assert issubclass(cls, Strategy) and cls.name == name


def test_unknown_strategy_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        get_strategy("no-such-strategy")


def test_unknown_option_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        create_strategy("random", ToySpace(), seed=0, bogus=1)


def test_random_dedups_small_space() -> None:
    """In a space with 6 configs, random proposes each once before repeating any."""
    space = ToySpace(params=[Param("a", "int", 0, 1), Param("b", "cat", choices=("x", "y", "z"))])
    strat = create_strategy("random", space, seed=0)
    keys = []
    for _ in range(6):
        (s,) = strat.ask(1)
        keys.append(space.key(s.config))
        strat.tell([Trial(len(keys), s.config, "ok", float(s.config["a"]) + 1.0)])
    assert len(set(keys)) == 6
    # once the space is spent it still answers (repeats allowed)
    assert len(strat.ask(2)) == 2
