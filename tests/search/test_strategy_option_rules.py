"""Strategy options are checked by name against one rule each (``search.options``), before a run does any
work and whenever a strategy is created: a value a constructor would take and misuse (``n_init=-3``,
``n_candidates`` in the billions, ``eta=1.5``) is a one-line UsageError naming the option and its range."""

from __future__ import annotations

import math

import pytest

from kd_compile.errors import UsageError
from kd_compile.search import AUTO, create_strategy, get_strategy, list_strategies, strategy_options
from kd_compile.search.options import OPTION_RULES, ORDERED_OPTIONS, check_strategy_options, option_defaults
from kd_compile.testing.strategies import ToySpace

BUILT_IN = [n for n in list_strategies() if n != AUTO]


@pytest.mark.parametrize("name", BUILT_IN)
def test_every_option_of_a_built_in_strategy_has_a_rule_its_default_meets(name):
    cls = get_strategy(name)
    defaults = option_defaults(cls)
    for opt in strategy_options(cls):
        assert opt in OPTION_RULES, f"{name}.{opt} has no rule in search.options"
        if defaults.get(opt) is not None:
            assert OPTION_RULES[opt].problem(defaults[opt]) is None, (name, opt, defaults[opt])
    check_strategy_options(cls, {})  # the defaults are in order


@pytest.mark.parametrize(
    ("name", "opts", "message"),
    [
        ("turbo", {"n_init": -3}, r"option n_init=-3 must be in \[1, 10000\]"),
        ("turbo", {"n_init": 2.5}, "n_init=2.5 must be a whole number"),
        ("turbo", {"n_candidates": 10**12}, r"n_candidates=.* must be in \[1, 10000\] \(each proposal scores them all"),
        ("turbo", {"length_init": math.nan}, "length_init=nan must be finite"),
        ("turbo", {"learn_constraints": 1}, "learn_constraints=1 must be true or false"),
        ("turbo-m", {"n_regions": 0}, r"n_regions=0 must be in \[1, 64\]"),
        ("bohb", {"eta": 1}, r"eta=1 must be in \[2, 100\]"),
        ("bohb", {"top_n_percent": 100}, r"top_n_percent=100 must be in \(0, 100\)"),
        ("evolution", {"population_size": "abc"}, "population_size='abc' must be a whole number"),
        ("lf-gpr", {"low_fidelity": 1.0}, r"low_fidelity=1.0 must be in \(0, 1\)"),
        ("mfkd", {"beta": -1.0}, r"beta=-1.0 must be in \[0, 1000\]"),
        ("mobo", {"mc_samples": True}, "mc_samples=True must be a whole number"),
    ],
)
def test_a_value_outside_its_rule_is_refused_naming_the_option(name, opts, message):
    with pytest.raises(UsageError, match=message) as info:
        create_strategy(name, ToySpace(), seed=0, budget=8, **opts)
    assert f"strategy '{name}'" in str(info.value) and "\n" not in info.value.line()


def test_ordered_options_count_the_default_of_the_one_not_given():
    assert ("length_init", "length_max") in ORDERED_OPTIONS
    with pytest.raises(UsageError, match=r"length_init \(0.8\) must not exceed length_max \(0.5\)") as info:
        create_strategy("turbo", ToySpace(), seed=0, budget=8, length_max=0.5)  # default length_init 0.8
    assert info.value.hint == "give length_init too, at most 0.5"
    with pytest.raises(UsageError, match="sample_size .* must not exceed population_size"):
        create_strategy("evolution", ToySpace(), seed=0, budget=8, population_size=4, sample_size=5)
    # in range and in order: created; None where the default is None lets the strategy choose
    s = create_strategy("turbo", ToySpace(), seed=0, budget=8, length_max=0.9, n_init=None, failure_tolerance=0)
    assert s.name == "turbo"



def test_strategies_json_lists_each_option_with_its_rule():
    import json

    from typer.testing import CliRunner

    from kd_compile.cli import app

    r = CliRunner().invoke(app, ["strategies", "--json"])
    assert r.exit_code == 0, r.output
    doc = {s["name"]: s for s in json.loads(r.output)}
    assert set(BUILT_IN) <= set(doc)
    assert doc["turbo"]["options"]["n_candidates"] == {"type": "int", "range": "[1, 10000]"}
    assert doc["turbo"]["options"]["learn_constraints"] == {"type": "bool", "range": "true or false"}
    assert doc["bohb"]["options"]["top_n_percent"]["range"] == "(0, 100)"
    assert doc["sobol"]["options"] == {} and sum(s["default"] for s in doc.values()) <= 1
