"""TensorRT runner and the ``"tensorrt"`` profiler (``kd_compile.profilers.tensorrt.runner``).

CONTRACT tests run the runner against the fake TensorRT of ``trt_helpers.py`` (buffers, tensor
addresses, ``execute_async_v3``, ``IProfiler``, engine inspector); they measure nothing, and the
profiler refuses to report a measured latency without a real CUDA device, which is tested too.
``@pytest.mark.tensorrt`` tests run for real only where ``tensorrt`` imports and a GPU exists.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch
from trt_helpers import builds, install_fake_tensorrt, real_tensorrt_or_skip

from kd_compile.errors import BackendUnavailableError, ExportError, UsageError
from kd_compile.profilers import InputSpec, TimingPolicy
from kd_compile.profilers.onnx_export import export_onnx
from kd_compile.profilers.tensorrt import EngineFromOnnx, TensorRTProfiler, TrtRunner, layers_from_trt
from kd_compile.profilers.tensorrt.runner import DEFAULT_TIMING
from kd_compile.testing.profilers import check_measurement, tiny_cnn

SPEC = InputSpec((3, 16, 16), batch=2)


@pytest.fixture(scope="module")
def cnn_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(tiny_cnn(), SPEC, tmp_path_factory.mktemp("onnx") / "cnn.onnx").path


@pytest.fixture
def fake_trt(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    return install_fake_tensorrt(monkeypatch)


def test_contract_runner_binds_buffers_and_collects_layer_times(
    fake_trt: types.ModuleType, cnn_onnx: Path, tmp_path: Path
) -> None:
    """CONTRACT (fake TensorRT): runner buffers, execute_async_v3, IProfiler, inspector.

    CPU tensors stand in for device buffers: the fake only checks the addresses it is given.
    """
    path = EngineFromOnnx(cnn_onnx, "fp16", cache_dir=tmp_path, batch=2)()
    runner = TrtRunner(path, SPEC, device="cpu")
    ctx = runner.context
    assert set(runner.inputs) == {"input"} and set(runner.outputs) == {"output"}
    assert runner.outputs["output"].shape == (2, 10)
    assert ctx.addresses == {
        "input": runner.inputs["input"].data_ptr(),
        "output": runner.outputs["output"].data_ptr(),
    }
    torch.testing.assert_close(runner.inputs["input"], SPEC.example())
    runner.execute(1234)
    assert ctx.executions == [1234]

    synced = []
    times = runner.profile_layers(77, runs=4, sync=lambda: synced.append(1))
    assert len(synced) == 4 and ctx.profiler is None  # the profiler is detached afterwards
    layers = ctx.engine.plan["layers"]
    assert list(times) == layers
    # execution k reports 0.01*(i+1)*k for layer i: the mean over k = 2..5 is 0.01*(i+1)*3.5
    for i, name in enumerate(layers):
        assert times[name] == pytest.approx(0.01 * (i + 1) * 3.5)
    info = runner.layer_info()
    assert [d["Name"] for d in info] == layers and {d["LayerType"] for d in info} == {"FakeKernel"}
    costs = layers_from_trt(info, {**times, "Reformat 0": 0.001})
    assert [c.name for c in costs] == layers + ["Reformat 0"]
    assert costs[0].op == "FakeKernel" and costs[0].latency_ms == times[layers[0]]


def test_contract_runner_rejects_bad_plan(fake_trt: types.ModuleType) -> None:
    with pytest.raises(ExportError, match="deserialize"):
        TrtRunner(b"not a plan", SPEC, device="cpu")


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA"
)
def test_profiler_refuses_measured_result_without_cuda(
    fake_trt: types.ModuleType, tmp_path: Path
) -> None:
    """With a fake TensorRT and no GPU the profiler must refuse rather than report a latency."""
    with TensorRTProfiler(cache_dir=tmp_path) as p:
        with pytest.raises(BackendUnavailableError, match="CUDA"):
            p.profile(tiny_cnn(), SPEC)
    assert builds(fake_trt) == []  # refused before doing any work


def test_profiler_reports_missing_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails, as without the package
    with TensorRTProfiler() as p:
        with pytest.raises(BackendUnavailableError) as exc_info:
            p.profile(tiny_cnn(), SPEC)
    assert "kd-compile[tensorrt]" in exc_info.value.line()



def test_profiler_timing_policy() -> None:
    """The TensorRT defaults are kept (20 warm-up, 100..5000 runs, 2%); old keywords still work."""
    assert DEFAULT_TIMING == TimingPolicy(warmup=20, min_iters=100, max_iters=5000, min_time_s=1.0,
                                          max_time_s=60.0, rel_se=0.02)
    assert TensorRTProfiler().timing == DEFAULT_TIMING
    p = TensorRTProfiler(min_time_s=0.2, min_iters=20, target_cv=0.03)
    assert p.timing == TimingPolicy(warmup=20, min_iters=20, max_iters=5000, min_time_s=0.2, rel_se=0.03)
    assert TensorRTProfiler(timing=TimingPolicy.fixed(30)).timing.stop == "fixed"
    with pytest.raises(UsageError, match="CUDA events"):
        TensorRTProfiler(timing=TimingPolicy(clock="cpu"))
    with pytest.raises(UsageError):
        TensorRTProfiler(precision="fp8")


# --- real TensorRT (only where it imports and a GPU exists) ----------------------------------


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_real_tensorrt_profile_fp16(tmp_path: Path) -> None:
    trt = real_tensorrt_or_skip()
    fast = TimingPolicy(warmup=20, min_iters=20, max_iters=5000, min_time_s=0.2, rel_se=0.02)
    with TensorRTProfiler(precision="fp16", cache_dir=tmp_path, timing=fast) as p:
        m = p.profile(tiny_cnn(), SPEC)
        again = p.profile(tiny_cnn(), SPEC)
    check_measurement(m, SPEC)
    assert m.runtime == "tensorrt" and m.device.startswith("cuda:")
    assert m.extra["trt_version"] == trt.__version__ and m.extra["engine_built"]
    assert not again.extra["engine_built"]  # same weights: engine from the cache
    assert m.layers and all(lc.latency_ms is not None for lc in m.layers)
