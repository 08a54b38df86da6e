"""--strategy-options: KEY=VALUE options of the strategy, parsed, checked against what the
strategy takes, and passed to it (turbo's learn_constraints switches SCBO's constraint GP)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_scbo import _trials  # the broken-constraint trials of the SCBO tests

from kd_compile.config import CompileConfig
from kd_compile.errors import UsageError
from kd_compile.parsing import kv_options, parse_kv_options
from kd_compile.search import create_strategy
from kd_compile.search.space import Param, ParamSpace

torch.set_num_threads(1)


def test_options_are_canonical_and_typed() -> None:
    text = parse_kv_options(" n_init=12 , learn_constraints=FALSE,gamma=0.25,name=x,beta=none", "--strategy-options")
    assert text == "beta=none,gamma=0.25,learn_constraints=FALSE,n_init=12,name=x"
    assert kv_options(text) == {"beta": None, "gamma": 0.25, "learn_constraints": False, "n_init": 12, "name": "x"}
    # the Python API's dict gives the same canonical text (so the journal's fingerprint agrees)
    assert parse_kv_options({"n_init": 12, "learn_constraints": False}, "f") == "learn_constraints=false,n_init=12"
    assert parse_kv_options("", "f") == "" and kv_options("") == {}
    cfg = CompileConfig.from_options("t.pt", strategy_options="n_init=3")
    assert cfg.strategy_options == "n_init=3" and CompileConfig.from_options("t.pt").strategy_options == ""


@pytest.mark.parametrize("bad", ["n_init", "=3", "1x=2", "a=1,a=2", "a b=1"])
def test_malformed_options_are_one_line_errors(bad: str) -> None:
    with pytest.raises(UsageError) as e:
        parse_kv_options(bad, "--strategy-options")
    assert "--strategy-options" in str(e.value) and "\n" not in e.value.line()


def test_turbo_without_learned_constraints_leaves_them_to_the_penalty() -> None:
    space = ParamSpace([Param("x", "float", low=0.0, high=1.0)])
    trials = _trials(space, np.linspace(0.0, 1.0, 15), broken=True)
    cx = np.array([[0.1], [0.9]])
    on = create_strategy("turbo", space, seed=0, budget=20, gp_maxiter=30)
    off = create_strategy("turbo", space, seed=0, budget=20, gp_maxiter=30, learn_constraints=False)
    for s in (on, off):
        s.tell(trials)
    assert on._violation_draws(cx, 8) is not None  # SCBO: a GP on the broken constraint
    assert off._violation_draws(cx, 8) is None
    assert len(off.ask(2)) == 2  # and it still proposes
    with pytest.raises(UsageError):
        create_strategy("turbo-m", space, seed=0, learn_constraints="no")


def test_every_listed_option_is_taken_by_its_strategy() -> None:
    """What `kd-compile strategies --options` lists (search.strategy_options) is exactly what each
    strategy accepts: each listed option, given its own default, builds the strategy."""
    import inspect

    from kd_compile.search import RUN_SET_OPTIONS, Objective, get_strategy, list_strategies, strategy_options
    from kd_compile.testing.strategies import ToySpace

    space = ToySpace()
    assert {"learn_constraints", "n_init"} <= set(strategy_options(get_strategy("turbo")))
    for name in list_strategies():
        cls = get_strategy(name)
        listed = strategy_options(cls)
        assert not set(listed) & set(RUN_SET_OPTIONS)
        defaults = {}
        for klass in inspect.getmro(cls):
            init = klass.__dict__.get("__init__")
            if init is not None:
                for p in inspect.signature(init).parameters.values():
                    if p.name in listed and p.default is not p.empty:
                        defaults.setdefault(p.name, p.default)
        extra = {"objectives": [Objective("acc", True), Objective("lat", False)]} if cls.multi_objective else {}
        for opt, value in defaults.items():
            create_strategy(name, space, seed=0, budget=10, **extra, **{opt: value})
        with pytest.raises(UsageError):
            create_strategy(name, space, seed=0, budget=10, **extra, no_such_option=1)


def test_the_cli_lists_the_options() -> None:
    from typer.testing import CliRunner

    from kd_compile.cli import app

    res = CliRunner().invoke(app, ["strategies", "--options"])
    assert res.exit_code == 0 and "OPTIONS" in res.output
    turbo = next(line for line in res.output.splitlines() if line.startswith("turbo "))
    assert "learn_constraints" in turbo and "n_init" in turbo
