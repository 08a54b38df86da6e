"""Student spaces sized for the input resolution (issue 15): strides and widths follow the input,
so ``--max-params 4M`` at 224 px proposes sensible students while glyph-sized spaces keep the
configs they had before."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from students_support import GLYPH, samples

from kd_compile.profilers.counting import trace_ops
from kd_compile.students import create_space
from kd_compile.students.cnn import CnnSpace
from kd_compile.students.trade import TradeSpace, auto_width_scale, stride_plan

PHOTO = (3, 224, 224)
MAX_PARAMS = 4_000_000


def _feasible(space: TradeSpace, n: int, seed: int = 0) -> tuple[list[dict], np.ndarray]:
    cfgs = samples(space, n, seed=seed)
    counts = np.array([space.deployed_params(c) for c in cfgs])
    return [c for c, p in zip(cfgs, counts, strict=True) if p <= MAX_PARAMS], counts


def test_width_scale_follows_the_input_side() -> None:
    assert [auto_width_scale((s, s)) for s in (16, 24, 32, 64, 112)] == [1.0] * 5
    assert auto_width_scale((224, 224)) == 2.0 and auto_width_scale((448, 448)) == 2.0
    assert 1.0 < auto_width_scale((160, 160)) < 2.0
    assert auto_width_scale((224, 20)) == 1.0  # the short side decides
    assert TradeSpace(input_shape=PHOTO, num_classes=1000).width_scale == 2.0
    assert TradeSpace(input_shape=PHOTO, num_classes=1000, width_scale=1.0).width_scale == 1.0


@pytest.mark.parametrize("shape", [GLYPH["input_shape"], (1, 16, 16), (1, 20, 20), (3, 32, 32), (3, 64, 64)])
def test_small_inputs_keep_their_space(shape: tuple[int, int, int]) -> None:
    # journals and README figures were made with width_scale=1: same parameters, same samples
    auto = create_space("trade", input_shape=shape, num_classes=62)
    explicit = create_space("trade", input_shape=shape, num_classes=62, width_scale=1.0)
    assert auto.to_dict() == explicit.to_dict()
    assert samples(auto, 20, seed=3) == samples(explicit, 20, seed=3)


def test_fewer_downsampling_steps_at_32_px_than_at_224() -> None:
    small, photo = stride_plan((32, 32), 4), stride_plan((224, 224), 4)
    assert photo == (2, 4) and small[1] < photo[1]
    space = TradeSpace(input_shape=PHOTO, num_classes=1000)
    cfg = dict(space.default(), **{f"s{i}_depth": 1 for i in range(1, 5)})
    assert space.stage_plans(cfg)[-1].out_hw == (7, 7)


@pytest.mark.parametrize("classes", [1000, 100])
def test_4m_params_at_224_px_gives_feasible_students_of_useful_size(classes: int) -> None:
    space = TradeSpace(input_shape=PHOTO, num_classes=classes)
    feasible, counts = _feasible(space, 200)
    assert len(feasible) >= 0.9 * len(counts)  # the limit rejects few proposals
    # ... and the students are not glyph-sized: the same samples at the glyph widths are smaller
    glyph_widths = TradeSpace(input_shape=PHOTO, num_classes=classes, width_scale=1.0)
    before = np.array([glyph_widths.deployed_params(c) for c in samples(glyph_widths, 200)])
    assert np.median(counts) > 2 * np.median(before)
    assert np.quantile(counts, 0.9) > 0.15 * MAX_PARAMS  # a good part of the space uses the budget


def test_224_px_students_run_with_sane_flops() -> None:
    space = TradeSpace(input_shape=PHOTO, num_classes=1000)
    feasible, _ = _feasible(space, 40, seed=7)
    flops = []
    for cfg in feasible[:3]:
        model = space.build(cfg).eval()
        with torch.no_grad():
            assert model(torch.randn(1, *PHOTO)).shape == (1, 1000)
        flops.append(trace_ops(model, PHOTO).total_flops)
    # a mobile-sized ImageNet student: between MobileNetV3-small (~0.1 GFLOPs) and ResNet-18's 1.8
    assert 50e6 <= float(np.median(flops)) <= 1500e6, flops


def test_cnn_first_layer_downsamples_only_for_large_inputs() -> None:
    cfg = {"depth": 5, **{f"w{i}": 16 for i in range(1, 6)}}
    small = CnnSpace(input_shape=(3, 32, 32), num_classes=10)
    assert small.strides(cfg)[0] == 1 and sum(s == 2 for s in small.strides(cfg)) == 3
    glyph = CnnSpace(**GLYPH)
    assert glyph.strides(cfg)[0] == 1
    photo = CnnSpace(input_shape=PHOTO, num_classes=1000)
    assert photo.strides(cfg) == [2] * 5  # 224 -> 7
    model = photo.build(cfg).eval()
    with torch.no_grad():
        assert model.layers(torch.randn(1, *PHOTO)).shape[-2:] == (7, 7)
