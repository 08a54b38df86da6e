"""Roofline predictor behaviour and calibration recovery on synthetic data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from kd_compile.calibrate import fit_efficiency, synthetic_problem
from kd_compile.profilers import InputSpec, create_profiler
from kd_compile.profilers.counting import OpRecord
from kd_compile.profilers.roofline import DeviceTerms, Efficiency, RooflineProfiler, fuse
from kd_compile.targets import get_target

torch.set_num_threads(1)
EFF = Efficiency(launch_scale=1.0)


def _matmul(flops: int, act: int = 1000, w: int = 1000) -> list[OpRecord]:
    return [OpRecord("fc", "matmul", flops, w, act // 2, act // 2, 1024)]


def test_compute_bound_monotone_in_flops() -> None:
    p = RooflineProfiler("rtx3090", precision="fp16", runtime="tensorrt", efficiency=EFF)
    lat = [p.predict_ops(_matmul(f), batch=1).latency_ms for f in (10**10, 2 * 10**10, 4 * 10**10)]
    assert lat[0] < lat[1] < lat[2]
    launch = get_target("rtx3090").launch_overhead_us * 1e-3
    # compute-bound: time above launch doubles with FLOPs
    assert (lat[2] - launch) == pytest.approx(2 * (lat[1] - launch), rel=1e-6)


def test_memory_bound_uses_bandwidth() -> None:
    t = get_target("t4")
    p = RooflineProfiler(t, precision="fp32", runtime="tensorrt", efficiency=EFF)
    ops = [OpRecord("x", "elementwise", 0, 0, 4 * 10**8, 4 * 10**8, 0)]
    lat = p.predict_ops(ops, batch=1).latency_ms
    expected = 8e8 / (t.memory_bandwidth_gbs * 1e9 * EFF.mem_elementwise) * 1e3 + t.launch_overhead_us * 1e-3
    assert lat == pytest.approx(expected, rel=1e-9)
    p16 = RooflineProfiler(t, precision="fp16", runtime="tensorrt", efficiency=EFF)
    assert p16.predict_ops(ops, batch=1).latency_ms < lat  # half the bytes


def test_fp16_faster_than_fp32_on_tensor_core_gpu() -> None:
    net = nn.Sequential(nn.Conv2d(64, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU(),
                        nn.Conv2d(128, 128, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(128, 10))
    spec = InputSpec((64, 56, 56), batch=32)
    f32 = create_profiler("roofline", target="a100", precision="fp32", runtime="torch").profile(net, spec)
    f16 = create_profiler("roofline", target="a100", precision="fp16", runtime="torch").profile(net, spec)
    assert f16.latency_ms < f32.latency_ms
    assert f16.method == "predicted" and f16.device == "a100" and f16.batch == 32
    assert sum(layer.latency_ms for layer in f16.layers) == pytest.approx(f16.latency_ms)


def test_tensorrt_fuses_conv_bn_act() -> None:
    ops = [OpRecord("conv", "conv", 10**6, 100, 1000, 1000, 64),
           OpRecord("bn", "batchnorm", 0, 32, 1000, 1000, 0),
           OpRecord("act", "elementwise", 0, 0, 1000, 1000, 0),
           OpRecord("blk", "elementwise", 0, 0, 2000, 1000, 0)]  # residual add reads 2 inputs
    trt = fuse(ops, "tensorrt")
    assert len(trt) == 1 and trt[0].act_bytes == 1000 + 1000 + 1000  # in, residual, out
    assert len(fuse(ops, "torch")) == 4
    assert len(fuse(ops, "onnxruntime")) == 2  # conv+bn+relu, then the add


def test_calibration_recovers_known_constants() -> None:
    true = Efficiency(conv=0.55, dwconv=0.12, matmul=0.7, attention=0.35, mem_compute=0.8,
                      mem_elementwise=0.65, c_half=24.0, launch_scale=1.8)
    dev = DeviceTerms.of(get_target("rtx3090"), "fp16", "tensorrt")
    table, meas = synthetic_problem(true, dev, n_models=80, seed=1)
    noisy = meas * np.exp(np.random.default_rng(2).normal(0, 0.005, len(meas)))
    fit, q = fit_efficiency(table, noisy, dev)
    for k, v in true.to_dict().items():
        assert getattr(fit, k) == pytest.approx(v, rel=0.05), k
    assert q["median_ape"] < 1.0 and q["spearman"] > 0.99
