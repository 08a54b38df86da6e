"""``--strategy auto`` (the default) runs quasi-random below the GP's needs and TuRBO from there,
and a run records the strategy that actually ran."""

from __future__ import annotations

from kd_compile.api import _resolved_strategy
from kd_compile.config import CompileConfig, compile_options
from kd_compile.search import AUTO, GP_MIN_BUDGET, get_strategy, strategy_for_budget


def test_auto_is_the_default() -> None:
    assert compile_options()["strategy"].default == AUTO


def test_auto_picks_by_budget_and_names_pass_through() -> None:
    assert strategy_for_budget(AUTO, 1) == "sobol"
    assert strategy_for_budget(AUTO, GP_MIN_BUDGET - 1) == "sobol"
    assert strategy_for_budget(AUTO, GP_MIN_BUDGET) == "turbo-m"
    assert strategy_for_budget("lf-gpr", 5) == "lf-gpr"
    for budget in (1, GP_MIN_BUDGET, 100):
        get_strategy(strategy_for_budget(AUTO, budget))  # always a registered strategy


def test_the_run_config_names_the_resolved_strategy() -> None:
    small = _resolved_strategy(CompileConfig.from_options("teacher.pt", budget=8))
    large = _resolved_strategy(CompileConfig.from_options("teacher.pt", budget=GP_MIN_BUDGET + 5))
    chosen = _resolved_strategy(CompileConfig.from_options("teacher.pt", budget=8, strategy="turbo"))
    assert (small.strategy, large.strategy, chosen.strategy) == ("sobol", "turbo-m", "turbo")
