from __future__ import annotations

import pytest

from kd_compile.config import Constraints, LatencyLimit, format_count, parse_bytes, parse_latency_ms, parse_size
from kd_compile.errors import UsageError


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("4M", 4_000_000),
        ("600K", 600_000),
        ("1.2G", 1_200_000_000),
        ("123456", 123456),
        ("0.5m", 500_000),
        (" 7k ", 7000),
        (42, 42),
    ],
)
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "abc", "4X", "-3M", "0", "4 MB", "M", True])
def test_parse_size_rejects(text):
    with pytest.raises(UsageError):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "ms"), [("2ms", 2.0), ("500us", 0.5), ("0.01s", 10.0), ("3", 3.0), ("250µs", 0.25), ("1e3us", 1.0)]
)
def test_parse_latency(text, ms):
    assert parse_latency_ms(text) == pytest.approx(ms)


@pytest.mark.parametrize("text", ["2 hours", "ms", "-1ms", "0s", "fast"])
def test_parse_latency_rejects(text):
    with pytest.raises(UsageError, match="latency"):
        parse_latency_ms(text)


def test_parse_bytes():
    assert parse_bytes("64MB") == 64_000_000
    assert parse_bytes("1GiB") == 1024**3
    with pytest.raises(UsageError):
        parse_bytes("lots")


def test_format_count():
    assert format_count(4_120_000) == "4.12M"
    assert format_count(600_000) == "600K"
    assert format_count(12) == "12"


def test_constraints_violations():
    c = Constraints(max_params=1000, max_flops=10_000, max_latency=LatencyLimit(1.0), max_memory_bytes=None)
    assert c.violations(999, 10_000, 0.5, 10**9) == []
    v = c.violations(1001, 20_000, 1.5, None)
    assert len(v) == 3 and "params" in v[0] and "FLOPs" in v[1] and "latency" in v[2]
    assert Constraints().violations(10**9, 10**12, 1e3, 10**12) == []


# --------------------------------------------------------------------------------------------
# CompileConfig: options declared once, parsed and validated in one place


def test_from_options_parses_the_cli_names():
    from kd_compile.config import CompileConfig

    c = CompileConfig.from_options(
        "t.pt", max_params="36K", max_latency="500us", budget=3, proxy_fraction=0.5, input_shape="1,20,20", augment=2
    )
    assert c.constraints.max_params == 36_000 and c.constraints.max_latency == LatencyLimit(0.5)
    assert c.budget.candidates == 3 and c.budget.proxy_data_fraction == 0.5
    assert c.input_shape == (1, 20, 20) and c.augment_views == 2
    assert c.target == "2080ti" and c.budget.final_epochs == 15.0  # defaults from the declarations


def test_every_option_has_help_and_a_unique_flag():
    from kd_compile.config import compile_options

    opts = compile_options()
    flags = [o.flag for o in opts.values()]
    assert len(flags) == len(set(flags))
    assert all(o.help for o in opts.values())
    assert {"target", "max_params", "budget", "proxy_fraction", "out", "seed"} <= set(opts)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"budget": True}, "--budget must be an integer"),
        ({"budget": 0}, "--budget"),
        ({"seed": "x"}, "--seed must be an integer"),
        ({"seed": -1}, "--seed"),
        ({"out": 123}, "--out"),
        ({"workers": -3}, "--workers"),
        ({"lr": float("nan")}, "--lr"),
        ({"lr": -1.0}, "--lr"),
        ({"time_limit": 0.0}, "--time-limit"),
        ({"proxy_fraction": 1.5}, "fraction"),
        ({"input_shape": "3,224"}, "--input-shape"),
        ({"target_acc": 85}, "--target-acc"),
        ({"proxy_data_fraction": 0.5}, "unknown option 'proxy_data_fraction'; did you mean 'proxy_fraction'"),
        ({"distiller": "fitnets"}, "--distiller"),
    ],
)
def test_from_options_rejects_bad_values_with_the_option_name(options, match):
    from kd_compile.config import CompileConfig

    with pytest.raises(UsageError, match=match):
        CompileConfig.from_options("t.pt", **options)


def test_none_keeps_the_declared_default():
    from kd_compile.config import CompileConfig

    c = CompileConfig.from_options("t.pt", budget=None, strategy=None, max_params=None)
    assert c.budget.candidates == 8 and c.strategy == "auto" and c.constraints.max_params is None


@pytest.mark.parametrize(
    ("text", "limit"),
    [("1x", LatencyLimit(1.0, True)), ("0.5X", LatencyLimit(0.5, True)), ("2ms", LatencyLimit(2.0)), ("none", None)],
)
def test_latency_limits_absolute_relative_or_none(text, limit):
    from kd_compile.config import parse_latency_limit

    assert parse_latency_limit(text) == limit


@pytest.mark.parametrize("text", ["0x", "-1x", "fastx", "x", "2 hours"])
def test_bad_latency_limits_are_usage_errors(text):
    from kd_compile.config import parse_latency_limit

    with pytest.raises(UsageError, match="--max-latency"):
        parse_latency_limit(text)


def test_a_bad_latency_limit_names_every_form_a_limit_takes():
    from kd_compile.config import parse_latency_limit

    with pytest.raises(UsageError, match=r"2ms.*0\.5x.*none"):
        parse_latency_limit("2y")


def test_by_default_a_student_may_not_be_slower_than_the_teacher():
    from kd_compile.config import CompileConfig

    c = CompileConfig.from_options("t.pt").constraints
    assert c.max_latency == LatencyLimit(1.0, relative=True)
    assert c.violations(1, 1, 0.9, None, teacher_latency_ms=1.0) == []
    (why,) = c.violations(1, 1, 1.2, None, teacher_latency_ms=1.0)
    assert "1x the teacher's" in why
    half = CompileConfig.from_options("t.pt", max_latency="0.5x").constraints
    assert half.violations(1, 1, 0.6, None, teacher_latency_ms=1.0)
    assert (
        CompileConfig.from_options("t.pt", max_latency="none").constraints.violations(
            1, 1, 9.0, None, teacher_latency_ms=1.0
        )
        == []
    )
    assert Constraints.from_dict(c.to_dict()) == c
