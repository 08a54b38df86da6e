"""PyTorch profiler (``kd_compile.profilers.torch_timer``): CPU threads, precisions, compile, CUDA."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from kd_compile.errors import UsageError
from kd_compile.profilers import InputSpec, TimingPolicy
from kd_compile.profilers.torch_timer import TorchProfiler
from kd_compile.testing.profilers import check_measurement, tiny_cnn

SPEC = InputSpec((3, 16, 16), batch=2)
FAST = TimingPolicy(warmup=2, min_iters=5, max_iters=200, min_time_s=0.05, max_time_s=2.0)


def test_torch_profiler_cpu_restores_threads_and_model() -> None:
    model = tiny_cnn()
    before = torch.get_num_threads()
    with TorchProfiler(device="cpu", threads=1, timing=FAST) as p:
        m = p.profile(model, SPEC)
    assert torch.get_num_threads() == before
    assert model.training  # the caller's flag is untouched
    assert m.runtime == "torch" and m.threads == 1 and m.extra["timer"] == "perf_counter"
    check_measurement(m, SPEC)


def test_torch_profiler_bf16_on_cpu() -> None:
    with TorchProfiler(device="cpu", precision="bf16", threads=1, timing=FAST) as p:
        m = p.profile(tiny_cnn(), SPEC)
    assert m.precision == "bf16"
    check_measurement(m, SPEC)


@pytest.mark.slow
def test_torch_profiler_compile_on_cpu_tiny_model() -> None:
    """torch.compile on CPU (Inductor C++ codegen) on a tiny MLP; slow: compiling takes time."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 8), nn.ReLU(), nn.Linear(8, 2))
    spec = InputSpec((3, 4, 4), batch=1)
    try:
        with TorchProfiler(device="cpu", compile=True, threads=1, timing=FAST) as p:
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
    with TorchProfiler(device="cuda", timing=FAST, **kw) as p:
        m = p.profile(model, SPEC)
    assert m.device.startswith("cuda:") and m.extra["timer"] == "cuda_events"
    assert m.threads is None
    assert next(model.parameters()).device.type == "cpu"  # the caller's model stays put
    check_measurement(m, SPEC)


def test_torch_profiler_timing_policy() -> None:
    assert TorchProfiler(device="cpu").timing == TimingPolicy()
    assert TorchProfiler(device="cpu", warmup=3, min_iters=7).timing == TimingPolicy(warmup=3, min_iters=7)
    with TorchProfiler(device="cpu", threads=1, timing=TimingPolicy.fixed(6, warmup=1, clock="cpu")) as p:
        m = p.profile(tiny_cnn(), SPEC)
    assert m.iterations == 6 and m.extra["timer"] == "thread_time"
    with pytest.raises(UsageError, match="threads=1"):
        TorchProfiler(device="cpu", threads=2, clock="cpu")
