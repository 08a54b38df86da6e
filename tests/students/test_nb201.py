"""NAS-Bench-201 networks and the ``nb201`` space (kd_compile/students/nb201.py).

Published figures: the NAS-Bench-201 API reports, for CIFAR-10, parameters from 0.073306M to
1.531546M and "FLOPs" (multiply-accumulates of convs and the classifier, biases included) from
7.78305M to 220.11969M; for CIFAR-100 (100 classes) the largest network has 1.537396M
parameters. The extremes are the cells without convolutions and the all-``nor_conv_3x3`` cell.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from kd_compile.errors import UsageError
from kd_compile.students import create_space
from kd_compile.students.nb201 import (
    NB201_OPS,
    NB201Space,
    build_nb201,
    nb201_arch_str,
    nb201_params,
    parse_nb201,
)
from kd_compile.testing.spaces import param_count, single_thread

LATENCY = Path(__file__).parents[2].parent / "shared" / "data" / "latency"
ALL_CONV = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"
NO_CONV = "|avg_pool_3x3~0|+|none~0|skip_connect~1|+|none~0|skip_connect~1|avg_pool_3x3~2|"
HELP_ROW1 = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    with single_thread():
        yield


def _macs(model: torch.nn.Module, side: int = 32) -> float:
    fc = FlopCounterMode(display=False)
    with fc, torch.no_grad():
        model.eval()(torch.zeros(1, 3, side, side))
    return fc.get_total_flops() / 2


@pytest.mark.parametrize(
    ("arch", "classes", "params", "macs"),
    [(ALL_CONV, 10, 1_531_546, 220.11969e6), (NO_CONV, 10, 73_306, 7.78305e6), (ALL_CONV, 100, 1_537_396, None)],
)
def test_published_extremes(arch: str, classes: int, params: int, macs: float | None) -> None:
    model = build_nb201(arch, num_classes=classes)
    assert param_count(model) == params == nb201_params(parse_nb201(arch), num_classes=classes)
    if macs is not None:
        # NAS-Bench-201 adds the classifier's 10 bias additions; torch's counter does not
        assert _macs(model) == pytest.approx(macs, abs=20)


def test_arch_str_round_trip_and_edge_order() -> None:
    ops = parse_nb201(HELP_ROW1)
    assert ops == ("nor_conv_3x3", "nor_conv_3x3", "avg_pool_3x3", "skip_connect", "nor_conv_3x3", "skip_connect")
    assert nb201_arch_str(ops) == HELP_ROW1
    # inputs may come in any order inside a node
    shuffled = "|none~0|+|skip_connect~1|none~0|+|avg_pool_3x3~2|none~0|nor_conv_1x1~1|"
    assert parse_nb201(shuffled) == ("none", "none", "skip_connect", "none", "nor_conv_1x1", "avg_pool_3x3")


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "|nor_conv_3x3~0|",
        "|conv~0|+|none~0|none~1|+|none~0|none~1|none~2|",
        "|none~1|+|none~0|none~1|+|none~0|none~1|none~2|",
        "|none~0|+|none~0|+|none~0|none~1|none~2|",
        "|none0|+|none~0|none~1|+|none~0|none~1|none~2|",
        "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|+|none~0|",
    ],
)
def test_malformed_arch_str(bad: str) -> None:
    with pytest.raises(UsageError, match="expected"):
        parse_nb201(bad)


def test_forward_shapes_and_odd_sides() -> None:
    model = build_nb201(HELP_ROW1).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
        # sides of 2 mod 4 make the second reduction see an odd map (ceil-mode shortcut pooling)
        for side in (18, 30, 17):
            assert model(torch.randn(1, 3, side, side)).shape == (1, 10)


@pytest.mark.skipif(not LATENCY.is_dir(), reason=f"published latency data not found at {LATENCY}")
def test_every_help_row_parses_and_samples_build() -> None:
    with open(LATENCY / "help-nb201-latency.csv", newline="") as f:
        archs = [row["arch_str"] for row in csv.DictReader(f)]
    assert len(archs) == 15_625
    parsed = [parse_nb201(a) for a in archs]
    assert len(set(parsed)) == 15_625 and all(nb201_arch_str(p) == a for p, a in zip(parsed, archs, strict=True))
    counts = [nb201_params(p) for p in parsed]
    assert min(counts) == 73_306 and max(counts) == 1_531_546  # the API's CIFAR-10 range
    for i in (0, 1, 7_777, 15_624):
        assert param_count(build_nb201(archs[i])) == counts[i]


def test_space_parameters_and_build() -> None:
    space = create_space("nb201", input_shape=(3, 32, 32), num_classes=10)
    assert isinstance(space, NB201Space)
    assert space.param_names[:6] == ["e1_0", "e2_0", "e2_1", "e3_0", "e3_1", "e3_2"]
    assert all(space.param(n).choices == NB201_OPS and space.param(n).kind == "cat" for n in space.param_names[:6])
    assert space.describe(space.default()).endswith("C16 N5")
    rng = np.random.default_rng(0)
    for _ in range(5):
        cfg = space.sample(rng)
        assert space.estimate_params(cfg) == param_count(space.build(cfg))
    fixed = create_space("nb201", input_shape=(1, 16, 16), num_classes=4, search_size=False, channels=8, cells=2)
    assert fixed.param_names == space.param_names[:6]
    model = fixed.build(fixed.default()).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 16, 16)).shape == (2, 4)
    assert [type(model.get_submodule(n)).__name__ for n in fixed.feature_layers(model)] == ["NB201Cell"] * 3
