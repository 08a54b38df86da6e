"""Latency predictor behaviour (roofline terms, host costs, fusion) and fit recovery on synthetic data."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from kd_compile.calibrate import fit_constants, synthetic_problem
from kd_compile.profilers import InputSpec, create_profiler
from kd_compile.profilers.counting import OpRecord, trace_ops
from kd_compile.profilers.roofline import T0_CLOCK_GHZ, Constants, DeviceScales, RooflineProfiler, fuse
from kd_compile.targets import TargetProfile, get_target

torch.set_num_threads(1)
C = Constants(e_tc=0.5, e_cuda=0.5, e_dw=0.1, e_mem=0.7, c_half=16.0, t0_us=2.0, h_lib_us=30.0, h_pw_us=10.0,
              h_kernel_us=4.0, edge=3.0, t0_graph_us=1.5)


def _matmul(flops: int, act: int = 1000, w: int = 1000) -> list[OpRecord]:
    return [OpRecord("fc", "matmul", flops, w, act // 2, act // 2, 1024)]


def _t0_ms(target: str, runtime: str = "tensorrt") -> float:
    """The fixed GPU cost of one kernel on ``target``: ``t0`` (eager) or ``t0_graph`` (graph
    runtimes) GPU cycles at its boost clock."""
    t0 = C.t0_us if runtime == "torch" else C.t0_graph_us
    return t0 * 1e-3 * T0_CLOCK_GHZ / (get_target(target).boost_clock_mhz / 1e3)


def test_compute_bound_monotone_in_flops() -> None:
    p = RooflineProfiler("rtx3090", precision="fp16", runtime="tensorrt", constants=C)
    lat = [p.predict_ops(_matmul(f), batch=1).latency_ms for f in (10**10, 2 * 10**10, 4 * 10**10)]
    assert lat[0] < lat[1] < lat[2]
    t0 = _t0_ms("rtx3090")
    # compute-bound: time above the fixed GPU cost doubles with FLOPs
    assert (lat[2] - t0) == pytest.approx(2 * (lat[1] - t0), rel=1e-6)
    peak = get_target("rtx3090").peak_for("fp16") * 1e12 * C.e_tc * 1024 / (1024 + C.c_half_graph)
    assert lat[1] == pytest.approx(2e10 / peak * 1e3 + t0, rel=1e-6)


def test_memory_bound_uses_bandwidth() -> None:
    t = get_target("t4")
    p = RooflineProfiler(t, precision="fp32", runtime="tensorrt", constants=C)
    ops = [OpRecord("x", "elementwise", 0, 0, 4 * 10**8, 4 * 10**8, 0)]
    lat = p.predict_ops(ops, batch=1).latency_ms
    expected = 8e8 / (t.memory_bandwidth_gbs * 1e9 * C.e_mem) * 1e3 + _t0_ms("t4")
    assert lat == pytest.approx(expected, rel=1e-9)
    p16 = RooflineProfiler(t, precision="fp16", runtime="tensorrt", constants=C)
    assert p16.predict_ops(ops, batch=1).latency_ms < lat  # half the bytes


def test_batch1_is_host_bound_and_runtime_dependent() -> None:
    """A tiny op costs its host dispatch, not its roofline: eager pays per ATen op by class,
    TensorRT per fused kernel; a Jetson host pays ``edge`` times more."""
    ops = [OpRecord("c", "conv", 1000, 100, 100, 100, 8), OpRecord("b", "batchnorm", 0, 10, 100, 100, 0),
           OpRecord("r", "elementwise", 0, 0, 100, 100, 0)]
    eager = RooflineProfiler("2080ti", precision="fp32", runtime="torch", constants=C).predict_ops(ops, 1)
    assert eager.latency_ms == pytest.approx((2 * C.h_lib_us + C.h_pw_us) * 1e-3, rel=1e-9)
    trt = RooflineProfiler("2080ti", precision="fp16", runtime="tensorrt", constants=C).predict_ops(ops, 1)
    assert trt.extra["kernels"] == 1
    assert trt.latency_ms == pytest.approx(C.h_kernel_us * 1e-3, rel=1e-9)
    jetson = RooflineProfiler("jetson-agx-xavier", precision="fp16", runtime="tensorrt", constants=C)
    assert jetson.predict_ops(ops, 1).latency_ms == pytest.approx(C.edge * C.h_kernel_us * 1e-3, rel=1e-9)
    scaled = RooflineProfiler("2080ti", precision="fp16", runtime="tensorrt", constants=C,
                              scales=DeviceScales(1.0, {"tensorrt": 0.5}))
    # fixed costs (host and launch) halve; the tiny roofline time is unchanged
    assert scaled.predict_ops(ops, 1).latency_ms == pytest.approx(0.5 * C.h_kernel_us * 1e-3, rel=1e-3)


def test_pascal_fp16_runs_at_fp32_rate() -> None:
    """GP102's native fp16 is 1/64 rate: fp16 kernels there run fp32 math (not 64x slower)."""
    big = _matmul(10**12)
    f32 = RooflineProfiler("1080ti", precision="fp32", runtime="torch", constants=C).predict_ops(big, 1)
    f16 = RooflineProfiler("1080ti", precision="fp16", runtime="torch", constants=C).predict_ops(big, 1)
    assert f16.latency_ms == pytest.approx(f32.latency_ms, rel=1e-6)


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
    assert trt[0].n_ops == 4 and trt[0].n_lib == 2  # conv and BN are library ops
    assert len(fuse(ops, "torch")) == 4
    assert len(fuse(ops, "onnxruntime")) == 2  # conv+bn+relu, then the add


def test_torch_compile_keeps_library_calls_and_fuses_what_lies_between() -> None:
    """``inductor``: a conv absorbs nothing and BN is not folded; the BN, activation and residual
    add after it are one generated kernel; the next conv starts anew. Its library calls take
    ``s_compile`` times eager's compute time, power cap included; other kernels do not."""
    conv = OpRecord("conv", "conv", 10**6, 100, 1000, 1000, 64)
    ops = [conv, OpRecord("bn", "batchnorm", 0, 32, 1000, 1000, 0), OpRecord("act", "elementwise", 0, 0, 1000, 1000, 0),
           OpRecord("blk", "elementwise", 0, 0, 2000, 1000, 0), OpRecord("pool", "pool", 0, 0, 1000, 250, 0),
           dataclasses.replace(conv, module="conv2")]
    ind = fuse(ops, "inductor")
    assert [k.op for k in ind] == ["conv", "elementwise", "conv"]
    assert ind[1].n_ops == 4 and ind[1].weight_bytes == 32
    assert ind[1].act_bytes == 1000 + 1000 + 250  # in, the residual, out: the chain stays on chip
    assert ind[0] == fuse([conv], "torch")[0]
    big = [OpRecord("c", "conv", 10**11, 10**3, 10**3, 10**3, 1024)]  # compute-bound
    mm, dw = _matmul(10**11), [OpRecord("d", "dwconv", 10**10, 10**3, 10**3, 10**3, 0)]
    pw = [OpRecord("a", "elementwise", 0, 0, 10**9, 10**9, 0)]  # memory-bound
    a100 = get_target("a100")
    base = dataclasses.replace(C, t0_graph_us=1e-3, tc_gflop_per_j=1e5)
    half = dataclasses.replace(base, s_compile=0.5)

    def ms(c, ops, target=a100, runtime="inductor"):
        return RooflineProfiler(target, "fp16", runtime, constants=c).predict_ops(ops, 1).latency_ms

    for work in (big, mm, dw):
        assert ms(half, work) == pytest.approx(0.5 * ms(base, work), rel=1e-3)
    assert ms(half, pw) == pytest.approx(ms(base, pw), rel=1e-9)
    assert ms(half, big, runtime="tensorrt") == ms(base, big, runtime="tensorrt")  # other runtimes: no s_compile
    t4 = get_target("t4")  # on eager's time at the 70 W cap (the table that fits s_compile ran at its cap too)
    capped = dataclasses.replace(base, e_tc=0.8, c_half=1e-6, tc_gflop_per_j=200.0)
    assert ms(capped, big, t4) == pytest.approx(1e11 / (200e9 * 70.0) * 1e3, rel=1e-3)
    assert ms(dataclasses.replace(capped, s_compile=0.5), big, t4) == pytest.approx(0.5 * ms(capped, big, t4), rel=1e-3)
    assert Constants.from_dict({k: v for k, v in half.to_dict().items() if k != "s_compile"}).s_compile == 1.0


def test_compile_scale_is_fitted_on_the_compile_rows_alone() -> None:
    """``fit_compile_scale`` recovers the ``s_compile`` that made a table's ``torch.compile`` rows,
    holding every other constant; eager rows of the same problem do not move it."""
    from kd_compile.calibrate.fit import predict
    from kd_compile.calibrate.holdout import fit_compile_scale
    from kd_compile.calibrate.problem import Problem
    from kd_compile.calibrate.tables import MeasuredRow
    from kd_compile.profilers.roofline import DeviceTerms, KernelTable, kernel_rows

    rng = np.random.default_rng(0)
    true = dataclasses.replace(C, s_compile=0.45)
    rows, kernels, devs = [], [], []
    for i in range(12):
        width = int(rng.integers(16, 256))
        ops = [OpRecord("c", "conv", int(rng.integers(10**8, 10**10)), width * 9 * width * 4, 10**6, 10**6, width),
               OpRecord("b", "batchnorm", 0, 8 * width, 10**6, 10**6, 0),
               OpRecord("a", "elementwise", 0, 0, 10**6, 10**6, 0)]
        for rt in ("inductor", "torch"):
            rows.append(MeasuredRow(f"m{i}", "rtx4090", rt, "fp16", 64, 1.0, "t.csv"))
            kernels.append(kernel_rows(fuse(ops, rt)))
            devs.append(DeviceTerms.of(get_target("rtx4090"), "fp16", rt))
    table = KernelTable.build(kernels, [64] * len(rows), devs)
    n = len(rows)
    problem = Problem(rows, table, np.ones(n), np.ones(n), np.ones(n), np.ones(n, bool))
    problem.seconds = predict(problem, np.ones(n, bool), true)
    problem.seconds[1::2] *= 3.0  # eager rows far off: they must not matter
    assert fit_compile_scale(problem, np.ones(n, bool), {"rtx4090": C}) == pytest.approx(0.45, rel=1e-3)


def test_fit_recovers_known_constants() -> None:
    true = Constants(e_tc=0.55, e_cuda=0.4, e_dw=0.08, e_mem=0.8, c_half=24.0, t0_us=20.0, h_lib_us=45.0,
                     h_pw_us=15.0, h_kernel_us=6.0, edge=2.8, t0_graph_us=1.8, c_half_graph=60.0)
    table, secs, w = synthetic_problem(true, n_models=60, seed=1)
    noisy = secs * np.exp(np.random.default_rng(2).normal(0, 0.003, len(secs)))
    # every constant free (calibrate's fits hold two); h_kernel's default, 0 (held), is no start
    fit, q = fit_constants(table, noisy, w, x0=Constants(h_kernel_us=8.0))
    for k, v in true.to_dict().items():
        assert getattr(fit, k) == pytest.approx(v, rel=0.1), k
    assert q["median_ape"] < 0.01 and q["spearman"] > 0.99


def test_fixed_gpu_cost_is_cycles_at_the_boost_clock() -> None:
    """A launch-bound kernel costs ``t0`` GPU cycles: a GPU with a lower boost clock pays more,
    in proportion, and a profile without a clock pays ``t0`` as quoted (at ``T0_CLOCK_GHZ``)."""
    c = Constants(**{**C.to_dict(), "h_kernel_us": 0.01})  # the GPU side binds, not the host
    ops = [OpRecord("x", "elementwise", 0, 0, 8, 8, 0)]
    t4 = get_target("t4")
    slow = dataclasses.replace(t4, name="t4-slow", boost_clock_mhz=t4.boost_clock_mhz / 2)
    bare = dataclasses.replace(t4, name="t4-bare", boost_clock_mhz=0.0)
    lat = {t.name: RooflineProfiler(t, "fp16", "tensorrt", constants=c).predict_ops(ops, 1).latency_ms
           for t in (t4, slow, bare)}
    assert lat["t4"] == pytest.approx(_t0_ms("t4"), rel=1e-3)
    assert lat["t4-slow"] == pytest.approx(2 * lat["t4"], rel=1e-3)
    assert lat["t4-bare"] == pytest.approx(C.t0_graph_us * 1e-3, rel=1e-3)
    # eager ATen ops pay their own fixed cost, also in cycles
    big = [OpRecord("x", "elementwise", 0, 0, 8, 8, 0)]
    eager = RooflineProfiler(t4, "fp16", "torch", constants=Constants(**{**c.to_dict(), "h_pw_us": 0.01}))
    assert eager.predict_ops(big, 1).latency_ms == pytest.approx(_t0_ms("t4", "torch"), rel=1e-3)


class _Dense(nn.Module):
    """A DenseNet-style block: every layer reads the concat of all earlier features."""

    def __init__(self, c: int = 8, layers: int = 4) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(c * (i + 1), c, 3, padding=1) for i in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for conv in self.convs:
            feats.append(conv(torch.cat(feats, 1)))
        return torch.cat(feats, 1)


class _Fire(nn.Module):
    """A SqueezeNet fire module: two branches, each read only by the concat."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(c, c, 1), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], 1)


def test_concat_inputs_read_elsewhere_are_counted_as_moved() -> None:
    dense = [o for o in trace_ops(_Dense(), (8, 8, 8)).ops if o.op == "concat"]
    # layer i's concat (i >= 2 inputs) copies every input: the block input and earlier features
    # are read by later concats too; only the last concat's newest feature is read once
    assert [o.ch for o in dense] == [1, 2, 3, 4, 4]
    assert dense[-1].moved_bytes == 4 * 8 * 8 * 8 * 4 and dense[-1].in_bytes == 5 * 8 * 8 * 8 * 4
    fire = [o for o in trace_ops(_Fire(), (8, 8, 8)).ops if o.op == "concat"]
    assert [(o.ch, o.moved_bytes) for o in fire] == [(0, 0)]


def test_tensorrt_copies_concat_inputs_and_layout_copies_run_alone() -> None:
    """TensorRT: a concat that cannot be eliminated is one copy kernel per moved input; an
    eliminated one adds no kernel but keeps the next BatchNorm from folding into the producer;
    a layout copy is never fused into the kernel before it. Eager and ORT: a concat is one op."""
    conv = OpRecord("conv", "conv", 10**6, 100, 1000, 1000, 64)
    bn = OpRecord("bn", "batchnorm", 0, 32, 3000, 3000, 0)
    moved = OpRecord("cat", "concat", 0, 0, 3000, 3000, 2, 2000)
    kept = fuse([conv, moved, bn], "tensorrt")
    assert [k.op for k in kept] == ["conv", "elementwise", "elementwise", "elementwise"]
    assert [k.act_bytes for k in kept[1:3]] == [2000, 2000]  # each reads and writes its input
    free = fuse([conv, dataclasses.replace(moved, ch=0, moved_bytes=0), bn], "tensorrt")
    assert len(free) == 2 and free[0].n_ops == 2  # concat in place; the BN after it stays a kernel
    assert len(fuse([conv, OpRecord("bn", "batchnorm", 0, 32, 1000, 1000, 0)], "tensorrt")) == 1
    for rt in ("torch", "onnxruntime"):
        assert sum(k.op == "elementwise" for k in fuse([conv, moved], rt)) == 1
    copy = OpRecord("shuffle", "copy", 0, 0, 1000, 1000, 0)
    assert len(fuse([conv, copy], "tensorrt")) == 2 and len(fuse([conv, copy], "onnxruntime")) == 2


def test_view_calls_cost_eager_dispatch_only_and_nothing_in_graph_runtimes() -> None:
    """A Python-level view is a host-only op in eager PyTorch (``h_pw``, no GPU time, so no
    ``t0``) and launches nothing in TensorRT, ONNX Runtime or ``torch.compile``."""
    conv = OpRecord("conv", "conv", 10**6, 100, 1000, 1000, 64)
    view = OpRecord("shuffle", "view", 0, 0, 0, 0, 0)
    for rt in ("tensorrt", "onnxruntime", "inductor"):
        assert fuse([conv, view], rt) == fuse([conv], rt)
    eager = fuse([conv, view, view], "torch")
    assert [k.op for k in eager] == ["conv", "view", "view"]
    for target in ("2080ti", "jetson-agx-xavier"):
        p = RooflineProfiler(target, "fp32", "torch", constants=C)
        alone = p.predict_ops([view], 1)
        edge = C.edge if get_target(target).kind == "edge-gpu" else 1.0
        assert alone.latency_ms == pytest.approx(C.h_pw_us * 1e-3 * edge, rel=1e-9)
        # no GPU time even at a batch where every real kernel is GPU-bound
        assert p.predict_ops([conv, view], 4096).latency_ms == pytest.approx(
            p.predict_ops([conv], 4096).latency_ms + alone.latency_ms, rel=1e-9)


def test_calibration_fits_hold_eager_t0_and_graph_host_cost() -> None:
    """``fit_on`` holds ``calibrate.HELD`` at their defaults, whatever the data and the start say,
    ties ``calibrate.TIED`` to their partner (one channel penalty for every runtime) unless told
    otherwise; the other constants move."""
    from kd_compile.calibrate import HELD, TIED, fit_on
    from kd_compile.calibrate.problem import Problem
    from kd_compile.calibrate.tables import MeasuredRow
    from kd_compile.profilers.roofline import DEFAULT_CONSTANTS

    true = dataclasses.replace(C, t0_us=20.0, h_kernel_us=6.0, c_half=40.0, c_half_graph=60.0, node_beta=0.3)
    table, secs, _ = synthetic_problem(true, n_models=20, seed=3)  # eager and TensorRT rows
    rows = [MeasuredRow(f"m{i}", "d", "torch", "fp32", 1, float(x), "t") for i, x in enumerate(secs)]
    ones = np.ones(len(rows))
    problem = Problem(rows, table, np.asarray(secs), ones, ones, ones.astype(bool))
    fit = fit_on(problem, np.ones(len(rows), bool), x0=true, max_nfev=30)
    assert set(HELD) == {"t0_us", "h_kernel_us", "c_half", "node_beta"}
    for k in HELD:
        assert getattr(fit, k) == getattr(DEFAULT_CONSTANTS, k)
    assert fit.h_lib_us != DEFAULT_CONSTANTS.h_lib_us
    assert dict(TIED) == {"c_half_graph": "c_half"} and fit.c_half_graph == fit.c_half == 16.0
    apart = fit_on(problem, np.ones(len(rows), bool), x0=true, max_nfev=30, tie=None)
    assert apart.c_half == 16.0 and apart.c_half_graph != 16.0


def test_device_roofline_scale_is_fitted_per_runtime() -> None:
    """A device measured in two runtimes gets a roofline scale for each (TensorRT's tactics and
    eager cuDNN reach different shares of one datasheet); a runtime it was not measured in falls
    back to their geometric mean, and the scales survive a calibration file."""
    from kd_compile.calibrate import fit_scales
    from kd_compile.calibrate.tables import MeasuredRow
    from kd_compile.profilers.roofline import DeviceTerms, KernelTable, kernel_rows, row_seconds

    rng = np.random.default_rng(0)
    agx = get_target("jetson-agx-xavier")
    kernels, batches, devs, rows = [], [], [], []
    for i in range(40):
        runtime = ("tensorrt", "torch")[i % 2]
        ops = [OpRecord("c", "conv", int(10 ** rng.uniform(8, 10)), 10**5, 10**5, 10**5, 64),
               OpRecord("a", "elementwise", 0, 0, 10**5, 10**5, 0)] * int(rng.integers(1, 20))
        kernels.append(kernel_rows(fuse(ops, runtime)))
        batches.append(1)
        devs.append(DeviceTerms.of(agx, "fp16", runtime))
        rows.append(MeasuredRow(f"m{i // 2}", agx.name, runtime, "fp16", 1, 0.0, "t"))
    table = KernelTable.build(kernels, batches, devs)
    truth = {"tensorrt": 1.2, "torch": 2.4}
    roof = np.array([truth[r.runtime] for r in rows])
    secs = row_seconds(table.with_scales(roof, np.ones(len(rows))), C)
    s = fit_scales(table, secs, rows, C, ridge=0.0)
    for rt, v in truth.items():
        assert s.roofline_for(rt) == pytest.approx(v, rel=0.02)
    assert s.roofline_for("onnxruntime") == pytest.approx((1.2 * 2.4) ** 0.5, rel=0.02)
    assert DeviceScales.from_dict(s.to_dict()) == s
    assert DeviceScales.from_dict({"roofline": 1.5}).roofline_for("torch") == 1.5  # older files


def test_device_memory_scale_apart_from_compute_when_asked() -> None:
    """With ``separate_memory`` (the structure the shipped one is compared against) a device whose
    sustained DRAM share differs from its share of peak FLOP/s gets a memory scale of its own: known
    compute and memory scales are recovered from compute-bound and memory-bound networks, one
    shared scale cannot fit both; by default (``SEPARATE_MEMORY``) the compute scale serves memory
    time too; a file written before the memory scale existed keeps using the compute scale."""
    from kd_compile.calibrate import SEPARATE_MEMORY, fit_scales
    from kd_compile.calibrate.tables import MeasuredRow
    from kd_compile.profilers.roofline import DeviceTerms, KernelTable, kernel_rows, row_seconds

    rng = np.random.default_rng(1)
    t4 = get_target("t4")
    kernels, rows = [], []
    for i in range(40):
        n = int(rng.integers(1, 20))
        if i % 2:  # compute-bound: large GEMMs, little traffic
            ops = [OpRecord("c", "conv", int(10 ** rng.uniform(9, 10)), 10**4, 10**4, 10**4, 256)] * n
        else:  # memory-bound: large pointwise traffic
            ops = [OpRecord("a", "elementwise", 0, 0, int(10 ** rng.uniform(7, 8)), 10**7, 0)] * n
        kernels.append(kernel_rows(fuse(ops, "tensorrt")))
        rows.append(MeasuredRow(f"m{i}", t4.name, "tensorrt", "fp16", 1, 0.0, "t"))
    devs = [DeviceTerms.of(t4, "fp16", "tensorrt")] * len(rows)
    table = KernelTable.build(kernels, [1] * len(rows), devs)
    ones = np.ones(len(rows))
    secs = row_seconds(table.with_scales(2.0 * ones, ones, 0.5 * ones), C)
    s = fit_scales(table, secs, rows, C, ridge=0.0, separate_memory=True)
    assert s.roofline_for("tensorrt") == pytest.approx(2.0, rel=0.03)
    assert s.memory_for("tensorrt") == pytest.approx(0.5, rel=0.03)
    shared = row_seconds(table.with_scales(ones, ones), C)  # one scale: the best is the geometric mean
    ratio = secs / shared
    assert ratio.max() / ratio.min() > 3.0
    assert not SEPARATE_MEMORY
    one = fit_scales(table, secs, rows, C, ridge=0.0)
    assert one.memory is None and one.memory_for("tensorrt") == one.roofline_for("tensorrt")
    assert 0.5 < one.roofline_for("tensorrt") < 2.0  # between the two, fitting neither
    assert DeviceScales.from_dict(s.to_dict()) == s
    old = DeviceScales.from_dict({"roofline": 1.5, "roofline_by_runtime": {"tensorrt": 1.2}})
    assert old.memory_for("tensorrt") == 1.2 and old.memory_for("torch") == 1.5


def test_channel_penalty_is_per_runtime_kind() -> None:
    """A conv with few channels is charged ``c_half`` in eager PyTorch and ``c_half_graph`` in a
    graph runtime (TensorRT times each layer's tactics; eager cuDNN picks by heuristics)."""
    c = dataclasses.replace(C, c_half=16.0, c_half_graph=64.0, t0_us=1e-3, t0_graph_us=1e-3, h_lib_us=0.1,
                            h_pw_us=0.1, h_kernel_us=0.0)
    conv = [OpRecord("c", "conv", 10**11, 10**3, 10**3, 10**3, 16)]  # compute-bound, 16 channels
    t = get_target("a100")
    full = t.peak_for("fp16", tensor_cores=True) * 1e12 * c.e_tc
    for runtime, c_half in (("torch", 16.0), ("tensorrt", 64.0), ("onnxruntime", 64.0)):
        ms = RooflineProfiler(t, "fp16", runtime, constants=c).predict_ops(conv, 1).latency_ms
        assert ms == pytest.approx(1e11 / (full * 16 / (16 + c_half)) * 1e3, rel=1e-3), runtime


def test_graph_runtime_gemm_on_cuda_cores_runs_at_e_tc_without_channel_penalty() -> None:
    """On a GPU without tensor cores (Jetson Nano), TensorRT's conv runs at ``e_tc`` of the CUDA-core
    peak and pays no channel penalty (no tensor-core tiles to waste), while eager PyTorch's runs at
    ``e_cuda`` with ``c_half``; on a tensor-core GPU both runtimes keep the penalty."""
    c = dataclasses.replace(C, e_tc=0.8, e_cuda=0.4, c_half=16.0, c_half_graph=64.0, t0_us=1e-3,
                            t0_graph_us=1e-3, h_lib_us=0.1, h_pw_us=0.1, h_kernel_us=0.0)
    conv = [OpRecord("c", "conv", 10**10, 10**3, 10**3, 10**3, 8)]  # compute-bound, 8 channels
    nano = get_target("jetson-nano")
    assert not nano.peak_tflops.get("fp16_tensor")
    cuda = nano.peak_for("fp16", tensor_cores=False) * 1e12
    ms = {rt: RooflineProfiler(nano, "fp16", rt, constants=c).predict_ops(conv, 1).latency_ms
          for rt in ("tensorrt", "onnxruntime", "torch")}
    assert ms["tensorrt"] == pytest.approx(1e10 / (cuda * 0.8) * 1e3, rel=1e-3)
    assert ms["onnxruntime"] == pytest.approx(ms["tensorrt"], rel=1e-6)
    assert ms["torch"] == pytest.approx(1e10 / (cuda * 0.4 * 8 / (8 + 16)) * 1e3, rel=1e-3)
    xavier = get_target("jetson-agx-xavier")  # tensor cores: TensorRT keeps c_half_graph
    tc = xavier.peak_for("fp16", tensor_cores=True) * 1e12
    trt = RooflineProfiler(xavier, "fp16", "tensorrt", constants=c).predict_ops(conv, 1).latency_ms
    assert trt == pytest.approx(1e10 / (tc * 0.8 * 8 / (8 + 64)) * 1e3, rel=1e-3)


def test_power_limit_caps_tensor_core_throughput_only() -> None:
    """A tensor-core GEMM runs at ``min(peak x e_tc, tc_gflop_per_j x tdp_w)``: a 70 W T4 is capped far
    below its 65 TFLOPS datasheet peak, a board without a TDP in its profile is not, and CUDA-core
    work (fp32 on Turing) never is."""
    c = dataclasses.replace(C, e_tc=0.8, c_half_graph=1e-6, t0_graph_us=1e-3, h_kernel_us=0.0, tc_gflop_per_j=200.0)
    conv = [OpRecord("c", "conv", 10**11, 10**3, 10**3, 10**3, 1024)]  # compute-bound
    t4 = get_target("t4")
    assert t4.tdp_w == 70.0
    ms = RooflineProfiler(t4, "fp16", "tensorrt", constants=c).predict_ops(conv, 1).latency_ms
    assert ms == pytest.approx(1e11 / (200e9 * 70.0) * 1e3, rel=1e-3)
    uncapped = dataclasses.replace(t4, name="t4-no-tdp", tdp_w=0.0)
    ms_free = RooflineProfiler(uncapped, "fp16", "tensorrt", constants=c).predict_ops(conv, 1).latency_ms
    assert ms_free == pytest.approx(1e11 / (t4.peak_for("fp16", tensor_cores=True) * 1e12 * 0.8) * 1e3, rel=1e-3)
    assert ms > 3 * ms_free
    loose = dataclasses.replace(c, tc_gflop_per_j=1e5)  # a cap above the peak changes nothing
    assert RooflineProfiler(t4, "fp16", "tensorrt", constants=loose).predict_ops(conv, 1).latency_ms == pytest.approx(
        ms_free, rel=1e-9)
    cuda = {rt: RooflineProfiler(t, "fp32", "torch", constants=c).predict_ops(conv, 1).latency_ms
            for rt, t in (("capped", t4), ("free", uncapped))}
    assert cuda["capped"] == pytest.approx(cuda["free"], rel=1e-12)
    # a calibration file written before the cap existed (no tc_gflop_per_j) keeps predicting without it
    old = {k: v for k, v in c.to_dict().items() if k != "tc_gflop_per_j"}
    before_cap = RooflineProfiler(t4, "fp16", "tensorrt", constants=Constants.from_dict(old))
    ms_old = before_cap.predict_ops(conv, 1).latency_ms
    assert ms_old == pytest.approx(ms_free, rel=1e-9)
    assert Constants.from_dict(c.to_dict()) == c


def test_power_cap_grows_with_a_finer_process_node() -> None:
    """The cap's FLOPs per joule are a 12-nm board's times ``(12 / process_nm) ** node_beta``: the
    same 70 W board made in 4 nm holds a cap 3x higher at ``node_beta`` 1 (sqrt 3 at 0.5); a profile
    without a node, or one in 12 nm, keeps the 12-nm cap; a calibration file written before the node
    term existed (no ``node_beta``) keeps one efficiency for every node."""
    c = dataclasses.replace(C, e_tc=0.8, c_half_graph=1e-6, t0_graph_us=1e-3, h_kernel_us=0.0, tc_gflop_per_j=200.0,
                            node_beta=1.0)
    conv = [OpRecord("c", "conv", 10**11, 10**3, 10**3, 10**3, 1024)]  # compute-bound
    t4 = get_target("t4")
    assert t4.process_nm == 12.0

    def ms(target: TargetProfile, constants: Constants = c) -> float:
        return RooflineProfiler(target, "fp16", "tensorrt", constants=constants).predict_ops(conv, 1).latency_ms

    capped_12nm = 1e11 / (200e9 * 70.0) * 1e3
    assert ms(t4) == pytest.approx(capped_12nm, rel=1e-3)
    assert ms(dataclasses.replace(t4, name="t4-no-node", process_nm=0.0)) == pytest.approx(capped_12nm, rel=1e-3)
    t4_in_4nm = dataclasses.replace(t4, name="t4-4nm", process_nm=4.0)
    assert ms(t4_in_4nm) == pytest.approx(capped_12nm / 3, rel=1e-3)
    assert ms(t4_in_4nm, dataclasses.replace(c, node_beta=0.5)) == pytest.approx(capped_12nm / 3**0.5, rel=1e-3)
    old = {k: v for k, v in c.to_dict().items() if k != "node_beta"}
    assert Constants.from_dict(old).node_beta == 0.0
    assert ms(t4_in_4nm, Constants.from_dict(old)) == pytest.approx(capped_12nm, rel=1e-3)
    # a coarser node lowers the cap; CUDA-core work is never capped, whatever the node
    t4_in_16nm = dataclasses.replace(t4, name="t4-16nm", process_nm=16.0)
    assert ms(t4_in_16nm) == pytest.approx(capped_12nm * 16 / 12, rel=1e-3)
    fp32 = [RooflineProfiler(t, "fp32", "torch", constants=c).predict_ops(conv, 1).latency_ms for t in (t4, t4_in_4nm)]
    assert fp32[0] == pytest.approx(fp32[1], rel=1e-12)


def test_structure_alternatives_for_the_choice_benchmark() -> None:
    """``benchmarks/latency_choices.py`` compares structures through two switches: a tied constant
    takes another's fitted value, and ``separate_memory=False`` fits one scale for compute and
    memory (a file without a memory scale then uses the compute scale)."""
    from kd_compile.calibrate import fit_constants, fit_scales
    from kd_compile.calibrate.tables import MeasuredRow

    true = dataclasses.replace(C, c_half=24.0, c_half_graph=24.0)
    table, secs, w = synthetic_problem(true, n_models=30, seed=4)
    fit, _ = fit_constants(table, secs, w, x0=Constants(h_kernel_us=8.0), tie={"c_half_graph": "c_half"},
                           max_nfev=60)
    assert fit.c_half_graph == fit.c_half
    rows = [MeasuredRow(f"m{i}", "t4", "tensorrt", "fp16", 1, float(x), "t") for i, x in enumerate(secs)]
    s = fit_scales(table, secs, rows, C, separate_memory=False)
    assert s.memory is None and not s.memory_by_runtime
    assert s.memory_for("tensorrt") == s.roofline_for("tensorrt")


def test_pytorch_fp32_runs_convolutions_on_tf32_tensor_cores_and_matmuls_on_cuda_cores() -> None:
    """fp32 on a GPU with TF32 (A100): PyTorch's cuDNN convolutions default to TF32 (tensor cores,
    ``e_tc``), its matmuls to fp32 (CUDA cores, ``e_cuda``); TensorRT puts both on TF32; ONNX
    Runtime's CUDA provider neither; a GPU without TF32 (V100) runs both on CUDA cores."""
    c = dataclasses.replace(C, e_tc=0.8, e_cuda=0.4, c_half=1e-6, c_half_graph=1e-6, t0_us=1e-3, t0_graph_us=1e-3,
                            h_lib_us=0.1, h_pw_us=0.1, h_kernel_us=0.0, tc_gflop_per_j=1e5)
    conv = [OpRecord("c", "conv", 10**11, 10**3, 10**3, 10**3, 1024)]  # compute-bound
    mm = _matmul(10**11)
    a100, v100 = get_target("a100"), get_target("v100")
    tf32, fp32 = a100.peak_tflops["tf32_tensor"] * 1e12, a100.peak_for("fp32") * 1e12

    def ms(target, runtime, ops):
        return RooflineProfiler(target, "fp32", runtime, constants=c).predict_ops(ops, 1).latency_ms

    assert ms(a100, "torch", conv) == pytest.approx(1e11 / (tf32 * 0.8) * 1e3, rel=1e-3)
    assert ms(a100, "torch", mm) == pytest.approx(1e11 / (fp32 * 0.4) * 1e3, rel=1e-3)
    assert ms(a100, "inductor", conv) == pytest.approx(ms(a100, "torch", conv), rel=1e-3)
    assert ms(a100, "tensorrt", mm) == pytest.approx(1e11 / (tf32 * 0.8) * 1e3, rel=1e-3)
    assert ms(a100, "onnxruntime", conv) == pytest.approx(1e11 / (fp32 * 0.8) * 1e3, rel=1e-3)  # graph, CUDA cores
    v = v100.peak_for("fp32") * 1e12
    assert ms(v100, "torch", conv) == pytest.approx(1e11 / (v * 0.4) * 1e3, rel=1e-3)


def test_bf16_is_refused_on_a_gpu_without_bf16_tensor_cores() -> None:
    """bf16 came with Ampere's tensor cores: a T4 or a Jetson Xavier has none, so predicting bf16 there
    (which TensorRT cannot build) is a usage error, not a number at the fp16 rate."""
    from kd_compile.errors import UsageError

    for name in ("t4", "jetson-agx-xavier", "v100"):
        with pytest.raises(UsageError, match="no bf16 tensor cores"):
            RooflineProfiler(name, "bf16", "tensorrt")
    a100 = RooflineProfiler("a100", "bf16", "tensorrt", constants=C)
    assert a100.predict_ops(_matmul(10**9), 1).latency_ms > 0


def test_int8_in_pytorch_is_refused_on_a_gpu() -> None:
    """PyTorch's quantized ops run on the CPU: eager PyTorch and torch.compile have no int8 network
    on a GPU to predict, while TensorRT and ONNX Runtime build one."""
    from kd_compile.errors import UsageError

    for runtime in ("torch", "inductor"):
        with pytest.raises(UsageError, match="runs no int8 network on a GPU"):
            RooflineProfiler("t4", "int8", runtime)
    for runtime in ("tensorrt", "onnxruntime"):
        assert RooflineProfiler("t4", "int8", runtime, constants=C).predict_ops(_matmul(10**9), 1).latency_ms > 0


def test_a_constant_no_residual_depends_on_is_found_flat() -> None:
    """A power cap above every kernel's rate moves no residual (the fit has no gradient back from
    there, and ``fit_constants`` restarts it); one that binds does. ``fit._flat`` tells them apart."""
    from kd_compile.calibrate.fit import _flat
    from kd_compile.profilers.constants import CONSTANT_NAMES
    from kd_compile.profilers.roofline import row_seconds

    table, _, _ = synthetic_problem(C, n_models=20, seed=3)
    j = CONSTANT_NAMES.index("tc_gflop_per_j")

    def resid_at(c: Constants):
        y = np.log(row_seconds(table, c))

        def resid(z: np.ndarray) -> np.ndarray:
            v = c.vector().copy()
            v[j] = np.exp(z[0])
            return np.log(row_seconds(table, Constants.from_vector(v))) - y

        return resid

    loose = dataclasses.replace(C, e_tc=0.8, tc_gflop_per_j=1e5)
    assert _flat(resid_at(loose), np.array([np.log(1e5)])) == [0]
    tight = dataclasses.replace(C, e_tc=0.8, tc_gflop_per_j=100.0)
    assert _flat(resid_at(tight), np.array([np.log(100.0)])) == []


def test_no_shipped_calibration_has_a_power_cap_that_never_binds() -> None:
    """Every fit's work per joule lies near the all-devices fit's: a fit that wandered to a cap no
    kernel reaches (the AGX Xavier's left-out fit once ran to 6,138 GFLOP/J at a higher robust cost)
    is restarted by ``fit_constants``."""
    import json

    from kd_compile.profilers.roofline import CALIBRATION_DIR

    k_all = json.loads((CALIBRATION_DIR / "_all_devices.json").read_text())["constants"]["tc_gflop_per_j"]
    for f in CALIBRATION_DIR.glob("[!_]*.json"):
        if f.name == "layer_costs.json":
            continue
        k = json.loads(f.read_text())["constants"].get("tc_gflop_per_j")
        assert k is None or 0.5 * k_all <= k <= 2 * k_all, (f.name, k)
