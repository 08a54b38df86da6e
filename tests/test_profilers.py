"""Profiler contract over every registered profiler; timing loop; ORT and torch profilers."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from kd_compile.errors import UsageError
from kd_compile.profilers.base import InputSpec
from kd_compile.profilers.onnx_export import export_onnx
from kd_compile.profilers.onnxrt import OnnxRuntimeProfiler, physical_cores, profile_onnx
from kd_compile.profilers.torch_timer import TorchProfiler, latency_stats, time_adaptive
from kd_compile.testing.profilers import (
    available_profilers,
    check_measurement,
    make_profiler,
    profiler_contract,
    tiny_cnn,
)

SPEC = InputSpec((3, 16, 16), batch=2)

# Constructor arguments that keep each profiler quick in a test; a profiler not listed here
# (a plugin, or one added later) is built with its defaults, which is itself part of the
# contract: every registered name must be constructible for the CLI's `--profiler NAME`.
FAST = dict(warmup=2, min_iters=5, max_iters=200, min_time_s=0.05, max_time_s=2.0)
CONTRACT_KWARGS: dict[str, dict] = {
    "onnxruntime": dict(threads=1, **FAST),
    "torch": dict(device="cpu", threads=1, **FAST),
    "roofline": dict(target="2080ti"),
}


@pytest.mark.parametrize("name", available_profilers())
def test_profiler_contract(name: str) -> None:
    """Every registered profiler: context manager, input checks, consistent Measurement."""
    model = tiny_cnn()
    m = profiler_contract(lambda: make_profiler(name, **CONTRACT_KWARGS.get(name, {})), model, SPEC)
    if name in ("onnxruntime", "torch"):
        assert m.method == "measured"
        assert m.device.startswith("cpu:")


def test_my_profilers_are_registered() -> None:
    names = available_profilers()
    for n in ("onnxruntime", "torch", "tensorrt", "trtexec"):
        assert n in names


# --- the adaptive timing loop -------------------------------------------------------------


def test_latency_stats_on_known_samples() -> None:
    s = latency_stats([1.0, 2.0, 3.0, 4.0, 100.0])
    assert s["p50"] == 3.0
    assert s["min"] == 1.0 and s["max"] == 100.0
    # MAD of |x - 3| = [2,1,0,1,97] is 1; robust cv = 1.4826 * 1 / 3, untouched by the outlier
    assert s["cv"] == pytest.approx(1.4826 / 3)
    assert s["median_rel_se"] == pytest.approx(1.2533 * 1.4826 / 3 / math.sqrt(5))
    assert s["p50"] <= s["p90"] <= s["p99"]
    with pytest.raises(ValueError):
        latency_stats([])


def test_time_adaptive_converges_on_steady_step() -> None:
    calls = []

    def step() -> float:
        calls.append(1)
        return 2.0 + 0.001 * (len(calls) % 3)

    r = time_adaptive(step, warmup=3, min_iters=20, max_iters=1000, min_time_s=0.0, target_cv=0.01)
    assert r.stopped_by == "converged"
    assert r.n == 20  # the first check, at min_iters, already passes
    assert len(calls) == 23  # warm-up runs are made but not recorded
    assert r.stats["p50"] == pytest.approx(2.001)


def test_time_adaptive_stops_at_max_iters_on_noisy_step() -> None:
    rng = np.random.default_rng(0)
    r = time_adaptive(
        lambda: float(rng.lognormal(0.0, 1.5)),
        warmup=0,
        min_iters=10,
        max_iters=40,
        min_time_s=0.0,
        target_cv=1e-4,
    )
    assert r.stopped_by == "max_iters" and r.n == 40


def test_time_adaptive_respects_min_time() -> None:
    def step() -> float:
        time.sleep(0.002)
        return 2.0

    r = time_adaptive(step, warmup=0, min_iters=1, max_iters=10_000, min_time_s=0.1, target_cv=0.5)
    assert r.stopped_by == "converged"
    assert r.wall_s >= 0.1
    assert 10 <= r.n < 200


def test_time_adaptive_rejects_bad_limits() -> None:
    with pytest.raises(UsageError):
        time_adaptive(lambda: 1.0, min_iters=10, max_iters=5)


# --- ONNX Runtime ----------------------------------------------------------------------------


def test_onnxruntime_profiler_caches_export_by_model_state(tmp_path: Path) -> None:
    model = tiny_cnn()
    with OnnxRuntimeProfiler(threads=1, cache_dir=tmp_path, **FAST) as p:
        m1 = p.profile(model, SPEC)
        files = sorted(tmp_path.glob("*.onnx"))
        assert len(files) == 1
        m2 = p.profile(model, SPEC)
        assert sorted(tmp_path.glob("*.onnx")) == files  # same state: no new export
        assert m1.extra["onnx_sha256"] == m2.extra["onnx_sha256"]
        with torch.no_grad():
            model[0].weight.add_(1.0)  # new weights: a new file
        m3 = p.profile(model, SPEC)
        assert len(list(tmp_path.glob("*.onnx"))) == 2
        assert m3.extra["onnx_sha256"] != m1.extra["onnx_sha256"]
    for m in (m1, m2, m3):
        check_measurement(m, SPEC)
        assert m.runtime == "onnxruntime" and m.threads == 1 and m.precision == "fp32"
        assert m.iterations >= 5
        assert m.extra["stopped_by"] in ("converged", "max_iters", "max_time")


def test_onnxruntime_default_threads_recorded() -> None:
    with OnnxRuntimeProfiler(**FAST) as p:
        m = p.profile(tiny_cnn(), SPEC)
    assert m.threads == physical_cores() >= 1
    assert m.extra["intra_op_num_threads_setting"] == 0


def test_onnxruntime_latency_tracks_model_size() -> None:
    """A model with ~100x the FLOPs must measure clearly slower (timing measures the model)."""
    small = tiny_cnn()
    big = nn.Sequential(
        nn.Conv2d(3, 64, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    )
    spec = InputSpec((3, 32, 32), batch=2)
    with OnnxRuntimeProfiler(threads=1, **FAST) as p:
        t_small = p.profile(small, spec).latency_ms
        t_big = p.profile(big, spec).latency_ms
    assert t_big > 3 * t_small


def test_profile_onnx_reads_shape_from_file(tmp_path: Path) -> None:
    info = export_onnx(
        tiny_cnn(), InputSpec((3, 16, 16), batch=1), tmp_path / "m.onnx", dynamic_batch=False
    )
    m = profile_onnx(info.path, threads=1, **FAST)
    assert m.batch == 1 and m.method == "measured"
    assert m.extra["onnx_sha256"] == info.sha256
    m4 = profile_onnx(
        info.path.parent / "m.onnx", InputSpec((3, 16, 16), batch=1), threads=1, **FAST
    )
    check_measurement(m4, InputSpec((3, 16, 16), batch=1))
    with pytest.raises(UsageError):
        profile_onnx(tmp_path / "missing.onnx")


def test_onnxruntime_cpu_clock(tmp_path: Path) -> None:
    """clock='cpu' times the calling thread's CPU time and is refused unless threads=1."""
    model = tiny_cnn()
    with OnnxRuntimeProfiler(threads=1, clock="cpu", cache_dir=tmp_path, **FAST) as p:
        m = p.profile(model, SPEC)
    assert m.extra["clock"] == "cpu" and m.extra["timer"] == "thread_time"
    check_measurement(m, SPEC)
    with pytest.raises(UsageError, match="threads=1"):
        OnnxRuntimeProfiler(threads=2, clock="cpu")
    with pytest.raises(UsageError):
        OnnxRuntimeProfiler(threads=1, clock="sundial")


def test_onnxruntime_rejects_bad_settings() -> None:
    with pytest.raises(UsageError):
        OnnxRuntimeProfiler(precision="fp16")
    with pytest.raises(UsageError):
        OnnxRuntimeProfiler(threads=0)


# --- torch -----------------------------------------------------------------------------------


def test_torch_profiler_cpu_restores_threads_and_model() -> None:
    model = tiny_cnn()
    before = torch.get_num_threads()
    with TorchProfiler(device="cpu", threads=1, **FAST) as p:
        m = p.profile(model, SPEC)
    assert torch.get_num_threads() == before
    assert model.training  # the caller's flag is untouched
    assert m.runtime == "torch" and m.threads == 1 and m.extra["timer"] == "perf_counter"
    check_measurement(m, SPEC)


def test_torch_profiler_bf16_on_cpu() -> None:
    with TorchProfiler(device="cpu", precision="bf16", threads=1, **FAST) as p:
        m = p.profile(tiny_cnn(), SPEC)
    assert m.precision == "bf16"
    check_measurement(m, SPEC)


@pytest.mark.slow
def test_torch_profiler_compile_on_cpu_tiny_model() -> None:
    """torch.compile on CPU (Inductor C++ codegen) on a tiny MLP; slow: compiling takes time."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 8), nn.ReLU(), nn.Linear(8, 2))
    spec = InputSpec((3, 4, 4), batch=1)
    try:
        with TorchProfiler(device="cpu", compile=True, threads=1, **FAST) as p:
            m = p.profile(model, spec)
    except Exception as exc:  # Inductor needs a C++ compiler; say so instead of failing obscurely
        if "compiler" in str(exc).lower() or "cpp" in str(exc).lower():
            pytest.skip(f"torch.compile unavailable on this machine: {exc}")
        raise
    assert m.extra["compile"] is True
    check_measurement(m, spec)


def test_torch_profiler_rejects_bad_settings() -> None:
    with pytest.raises(UsageError):
        TorchProfiler(device="cpu", cuda_graphs=True)
    with pytest.raises(UsageError):
        TorchProfiler(device="cpu", precision="int8")
    with pytest.raises(UsageError):
        TorchProfiler(device="mps")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize(
    "kw",
    [dict(), dict(precision="fp16"), dict(precision="bf16", cuda_graphs=True)],
    ids=["fp32", "fp16", "bf16-graphs"],
)
def test_torch_profiler_cuda(kw: dict) -> None:
    model = tiny_cnn()
    with TorchProfiler(device="cuda", **FAST, **kw) as p:
        m = p.profile(model, SPEC)
    assert m.device.startswith("cuda:") and m.extra["timer"] == "cuda_events"
    assert m.threads is None
    assert next(model.parameters()).device.type == "cpu"  # the caller's model stays put
    check_measurement(m, SPEC)
