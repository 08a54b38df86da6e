"""Once-for-All MobileNetV3 subnets and the ``ofa`` space (kd_compile/students/ofa.py).

``ofa-architectures.csv`` has no parameter or MAC figures, so the checks are consistency ones:
every row parses and round-trips, sampled rows run end to end at their resolution, the built
parameter count equals the closed form, and torch's MAC count equals an independent count that
follows OFA's own ``count_flops_given_config`` (``ofa/nas/efficiency_predictor``).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from timm.layers import make_divisible
from torch.utils.flop_counter import FlopCounterMode

from kd_compile.errors import UsageError
from kd_compile.students import create_space
from kd_compile.students.ofa import OFA_STRIDES, OFA_WIDTHS, OfaArch, OfaSpace, build_ofa, ofa_params, parse_ofa
from kd_compile.testing.spaces import param_count, single_thread

LATENCY = Path(__file__).parents[2].parent / "shared" / "data" / "latency"
ROW0 = "204/2-2-2-2-3/k7e6-k5e4|k7e6-k7e3|k5e3-k7e6|k5e3-k3e6|k5e6-k3e4-k5e3"
SE = (False, True, False, True, True)


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    with single_thread():
        yield


def _ofa_style_macs(arch: OfaArch, num_classes: int = 1000) -> int:
    """Conv/linear MACs counted layer by layer as OFA's MBv3 FLOPs table does."""
    f = (arch.resolution + 1) // 2
    macs = f * f * 3 * 24 * 9 + f * f * 24 * 9 + f * f * 24 * 24  # stem, first block (dw, pw)
    c_in = 24
    for stage, c_out, stride, se in zip(arch.blocks, OFA_WIDTHS, OFA_STRIDES, SE, strict=True):
        for j, (k, e) in enumerate(stage):
            out = (f - 1) // (stride if j == 0 else 1) + 1
            mid = make_divisible(c_in * e, 8)
            macs += f * f * c_in * mid + out * out * mid * k * k + out * out * mid * c_out
            if se:
                macs += 2 * mid * make_divisible(mid // 4, 8)
            f, c_in = out, c_out
    return macs + f * f * c_in * 1152 + 1152 * 1536 + 1536 * num_classes


def _torch_macs(model: torch.nn.Module, side: int) -> float:
    fc = FlopCounterMode(display=False)
    with fc, torch.no_grad():
        out = model.eval()(torch.zeros(1, 3, side, side))
    assert out.shape == (1, 1000)
    return fc.get_total_flops() / 2


def test_row0_round_trip_and_counts() -> None:
    arch = parse_ofa(ROW0)
    assert arch.resolution == 204 and arch.depths == (2, 2, 2, 2, 3) and arch.blocks[4][2] == (5, 3)
    assert arch.spec() == ROW0
    assert parse_ofa(ROW0.replace("|", ",")) == arch
    model = build_ofa(arch)
    assert param_count(model) == ofa_params(arch.blocks)
    assert _torch_macs(model, arch.resolution) == _ofa_style_macs(arch)


@pytest.mark.skipif(not LATENCY.is_dir(), reason=f"published latency data not found at {LATENCY}")
def test_every_row_parses_and_samples_run() -> None:
    with open(LATENCY / "ofa-architectures.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5_000
    archs = []
    for r in rows:
        spec = f"{r['resolution']}/{r['depths']}/{r['active_blocks']}"
        arch = parse_ofa(spec)
        assert arch.spec() == spec and 128 <= arch.resolution <= 224
        archs.append(arch)
    for arch in archs[::1_666]:
        model = build_ofa(arch)
        assert param_count(model) == ofa_params(arch.blocks)
        assert _torch_macs(model, arch.resolution) == _ofa_style_macs(arch)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "204",
        "204/2-2-2-2-3",
        "x/2-2-2-2-3/k7e6-k5e4|k7e6-k7e3|k5e3-k7e6|k5e3-k3e6|k5e6-k3e4-k5e3",
        "204/2-2-2-2/k7e6-k5e4|k7e6-k7e3|k5e3-k7e6|k5e3-k3e6",
        "204/1-2-2-2-3/k7e6|k7e6-k7e3|k5e3-k7e6|k5e3-k3e6|k5e6-k3e4-k5e3",
        "204/2-2-2-2-3/k7e6-k5e4|k7e6-k7e3|k5e3-k7e6|k5e3-k3e6|k5e6-k3e4",
        "204/2-2-2-2-3/k9e6-k5e4|k7e6-k7e3|k5e3-k7e6|k5e3-k3e6|k5e6-k3e4-k5e3",
        "204/2-2-2-2-3/k7e5-k5e4|k7e6-k7e3|k5e3-k7e6|k5e3-k3e6|k5e6-k3e4-k5e3",
        "204/2-2-2-2-3/k7-k5e4|k7e6-k7e3|k5e3-k7e6|k5e3-k3e6|k5e6-k3e4-k5e3",
    ],
)
def test_malformed(bad: str) -> None:
    with pytest.raises(UsageError):
        parse_ofa(bad)


def test_space_strides_follow_the_input() -> None:
    assert create_space("ofa", input_shape=(3, 224, 224), num_classes=1000).strides == (2, 2, 2, 2, 2)
    assert create_space("ofa", input_shape=(3, 32, 32), num_classes=10).strides == (1, 1, 2, 2, 2)
    assert create_space("ofa", input_shape=(1, 16, 16), num_classes=10).strides == (1, 1, 1, 2, 2)


def test_space_canonical_and_build() -> None:
    space = create_space("ofa", input_shape=(1, 16, 16), num_classes=10)
    assert isinstance(space, OfaSpace)
    assert len(space.params) == 5 * (1 + 4 * 2)
    cfg = {**space.default(), "s1_depth": 2, "s1_b4_k": 7, "s1_b4_e": 6, "s2_depth": 4, "s2_b4_k": 7}
    canon = space.canonical(cfg)
    assert canon["s1_b4_k"] == 3 and canon["s1_b4_e"] == 4 and canon["s2_b4_k"] == 7
    assert space.blocks(canon)[1][3] == (7, 4)
    rng = np.random.default_rng(1)
    for c in [canon, space.sample(rng)]:
        model = space.build(c).eval()
        assert space.estimate_params(c) == param_count(model)
        with torch.no_grad():
            assert model(torch.randn(2, 1, 16, 16)).shape == (2, 10)
        assert parse_ofa(space.describe(c)).blocks == space.blocks(c)
    assert space.feature_layers(model) == [f"stages.{i}" for i in range(5)]
