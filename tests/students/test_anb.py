"""Accel-NASBench networks (kd_compile/students/anb.py) against the published ``params_M``/``macs_M``.

``accel-nasbench-mbconv.csv`` gives each architecture's parameters and MACs at 224 px. Built
here, the parameter counts agree exactly (``params_M`` has six decimals). The published MACs
follow their counter's convention: conv and linear multiply-accumulates plus 4 per BatchNorm
output element plus one per pooled element; counted that way they agree within 0.1%. Torch's
``FlopCounterMode`` counts the convs and linears only, 5-12% below the published figure.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from timm.models._efficientnet_blocks import SqueezeExcite
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from kd_compile.errors import UsageError
from kd_compile.students.anb import AnbStage, anb_spec, anb_spec_from_row, build_anb, parse_anb
from kd_compile.testing.spaces import param_count, single_thread

LATENCY = Path(__file__).parents[2].parent / "shared" / "data" / "latency"
needs_data = pytest.mark.skipif(not LATENCY.is_dir(), reason=f"published latency data not found at {LATENCY}")


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    with single_thread():
        yield


def _rows() -> list[dict[str, str]]:
    with open(LATENCY / "accel-nasbench-mbconv.csv", newline="") as f:
        return list(csv.DictReader(f))


def _macs(model: nn.Module, side: int = 224) -> tuple[float, float]:
    """(conv + linear MACs, the same plus 4 per BN output element plus pooled elements)."""
    extra = [0]

    def hook(mod: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        if isinstance(mod, nn.BatchNorm2d):
            extra[0] += 4 * out.numel()
        elif isinstance(mod, nn.AdaptiveAvgPool2d):
            extra[0] += inp[0].numel() + out.numel()
        elif isinstance(mod, SqueezeExcite):  # its global pool is a mean over the input
            extra[0] += inp[0].numel()

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    fc = FlopCounterMode(display=False)
    with fc, torch.no_grad():
        model.eval()(torch.zeros(1, 3, side, side))
    for h in handles:
        h.remove()
    conv = fc.get_total_flops() / 2
    return conv, conv + extra[0]


@needs_data
def test_every_row_has_a_spec() -> None:
    rows = _rows()
    assert len(rows) == 5_138
    for r in rows:
        spec = anb_spec_from_row(r)
        # the CSV's own arch_encoding (SE as a trailing "se") names the same network
        assert parse_anb(spec) == parse_anb(r["arch_encoding"])
        assert anb_spec(parse_anb(spec)) == spec


@needs_data
def test_params_and_macs_match_published() -> None:
    rows = _rows()
    sample = rows[:: len(rows) // 20][:20]
    assert sum(any(r[f"b{i}_se"] == "1" for i in range(7)) for r in sample) >= 5
    for r in sample:
        model = build_anb(anb_spec_from_row(r))
        params = param_count(model)
        assert params == round(float(r["params_M"]) * 1e6)
        conv, published_style = _macs(model)
        macs = float(r["macs_M"]) * 1e6
        assert published_style == pytest.approx(macs, rel=0.001)
        assert 0.85 * macs < conv < macs


def test_spec_grammar() -> None:
    stages = parse_anb("e6k3l1s0-e4k5l2s1-e6k3l3s0-e6k5l3s0-e6k5l2s0-e1k3l2s0-e1k3l2s1")
    assert stages[1] == AnbStage(4, 5, 2, True) and stages[5] == AnbStage(1, 3, 2, False)
    assert parse_anb("e6k3l1|e4k5l2se|e6k3l3|e6k5l3|e6k5l2|e1k3l2|e1k3l2se") == stages
    model = build_anb(stages, num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 7)
    # stage 2 (e4, SE): squeeze of the block input, 16 // 4 channels, then 24 // 4
    assert model.stages[1][0].se.conv_reduce.out_channels == 4
    assert model.stages[1][1].se.conv_reduce.out_channels == 6


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "e6k3l1s0-e4k5l2s1",
        "e6k3l1s0-e4k5l2s1-e6k3l3s0-e6k5l3s0-e6k5l2s0-e1k3l2s0-e1k3l2s1-e1k3l1s0",
        "e3k3l1s0-e4k5l2s1-e6k3l3s0-e6k5l3s0-e6k5l2s0-e1k3l2s0-e1k3l2s1",
        "e6k7l1s0-e4k5l2s1-e6k3l3s0-e6k5l3s0-e6k5l2s0-e1k3l2s0-e1k3l2s1",
        "e6k3l5s0-e4k5l2s1-e6k3l3s0-e6k5l3s0-e6k5l2s0-e1k3l2s0-e1k3l2s1",
        "e6k3l1s2-e4k5l2s1-e6k3l3s0-e6k5l3s0-e6k5l2s0-e1k3l2s0-e1k3l2s1",
        "e6k3-e4k5l2s1-e6k3l3s0-e6k5l3s0-e6k5l2s0-e1k3l2s0-e1k3l2s1",
    ],
)
def test_malformed(bad: str) -> None:
    with pytest.raises(UsageError, match="expected") as err:
        parse_anb(bad)
    # the message names both accepted forms, and its two examples parse
    examples = re.findall(r"e\.g\. (\S+?),? ", str(err.value) + " ")
    assert len(examples) == 2 and "|" in examples[1]
    assert parse_anb(examples[0]) and parse_anb(examples[1])[-1].se


def test_row_helper_rejects_incomplete_rows() -> None:
    with pytest.raises(UsageError):
        anb_spec_from_row({"b0_e": "6"})
