"""Latency on the target (``kd_compile.latency``): measured where the hardware is, predicted
where it is not, cached on disk."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from kd_compile.errors import UsageError
from kd_compile.latency import (
    MeasurementCache,
    gpu_name_matches,
    local_target,
    measure_or_predict,
    plan_latency,
    resolve_target,
)
from kd_compile.profilers import InputSpec
from kd_compile.targets import get_target, list_targets

SPEC = InputSpec((1, 12, 12))


def _net(width: int = 8) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10)
    ).eval()


def test_the_cpu_target_is_measured_with_onnx_runtime():
    plan = plan_latency(get_target("cpu"))
    assert plan.method == "measure" and plan.profiler == "onnxruntime" and plan.device.startswith("cpu:")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU, which may be the target")
def test_a_remote_gpu_is_predicted_and_cannot_be_measured():
    plan = plan_latency(get_target("2080ti"))
    assert plan.method == "predict" and plan.profiler == "roofline"
    with pytest.raises(UsageError, match="cannot measure on '2080ti'"):
        plan_latency(get_target("2080ti"), "measure")
    assert plan_latency(get_target("cpu"), "predict").method == "predict"
    with pytest.raises(UsageError, match="--latency"):
        plan_latency(get_target("cpu"), "guess")


def test_an_explicit_runtime_and_precision_are_honoured():
    cpu = get_target("cpu")
    eager = plan_latency(cpu, "measure", runtime="torch", precision="fp32")
    assert (eager.method, eager.profiler, eager.options) == ("measure", "torch", {"precision": "fp32"})
    assert plan_latency(cpu, "auto", runtime="onnxruntime").options == {}
    pred = plan_latency(get_target("t4"), "predict", runtime="torch", precision="fp32")
    assert pred.profiler == "roofline" and pred.options["runtime"] == "torch" and pred.options["precision"] == "fp32"
    assert set(plan_latency(get_target("t4"), "predict").options) == {"target"}  # the target's own defaults


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"runtime": "tvm"}, "unknown runtime 'tvm'"),
        ({"precision": "fp8"}, "unknown precision 'fp8'"),
        ({"runtime": "tensorrt", "method": "measure"}, "needs a GPU"),
        ({"runtime": "inductor", "method": "measure"}, "can only be predicted"),
        # auto measures when it can; torch.compile it cannot, and predicting it refuses a CPU
        ({"runtime": "inductor"}, "runs on NVIDIA GPUs, not on the CPU target"),
        ({"runtime": "tensorrt", "method": "predict"}, "runs on NVIDIA GPUs, not on the CPU target"),
        ({"runtime": "onnxruntime", "precision": "fp16"}, "measures fp32 only"),
        ({"runtime": "onnxruntime", "precision": "int8", "method": "measure"}, "measures fp32 only"),
    ],
)
def test_a_runtime_or_precision_that_cannot_be_used_is_a_usage_error(kwargs, message):
    with pytest.raises(UsageError, match=message) as err:
        plan_latency(get_target("cpu"), **{"method": "auto", **kwargs})
    if kwargs.get("precision") == "int8":  # no runtime here measures int8: the hint says predict
        assert "half-precision" not in err.value.hint and "predict" in err.value.hint


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU, local is that GPU")
def test_local_without_a_gpu_is_this_cpu():
    assert local_target().name == "cpu" and resolve_target("local").local


def test_measurements_are_cached_by_architecture_not_weights(tmp_path):
    cache = MeasurementCache(tmp_path)
    plan = plan_latency(get_target("cpu"))
    torch.manual_seed(0)
    a = measure_or_predict(_net(), SPEC, plan, fast=True, cache=cache)
    assert a.method == "measured" and not a.extra.get("cached") and len(list(tmp_path.glob("*.json"))) == 1
    torch.manual_seed(1)  # other weights, same architecture: served from the cache
    b = measure_or_predict(_net(), SPEC, plan, fast=True, cache=cache)
    assert b.extra.get("cached") and b.latency_ms == a.latency_ms
    c = measure_or_predict(_net(16), SPEC, plan, fast=True, cache=cache)  # another architecture
    assert not c.extra.get("cached") and len(list(tmp_path.glob("*.json"))) == 2


def test_a_damaged_cache_entry_is_measured_again(tmp_path):
    cache = MeasurementCache(tmp_path)
    plan = plan_latency(get_target("cpu"))
    measure_or_predict(_net(), SPEC, plan, fast=True, cache=cache)
    (entry,) = tmp_path.glob("*.json")
    entry.write_text("{not json")
    m = measure_or_predict(_net(), SPEC, plan, fast=True, cache=cache)
    assert m.method == "measured" and not m.extra.get("cached")
    assert measure_or_predict(_net(), SPEC, plan, fast=True, cache=cache).extra.get("cached")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_local_gpu_is_measured_in_its_runtime(tmp_path):
    target = local_target()
    plan = plan_latency(target, "measure")
    assert plan.method == "measure" and plan.device.startswith("cuda:")
    m = measure_or_predict(_net(), SPEC, plan, fast=True, cache=MeasurementCache(tmp_path))
    assert m.method == "measured" and m.latency_ms > 0 and m.device.startswith("cuda:")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_an_explicit_runtime_on_the_local_gpu_is_measured_in_it():
    eager = plan_latency(local_target(), "measure", runtime="torch", precision="fp32")
    assert eager.profiler == "torch" and eager.options == {"precision": "fp32", "device": "cuda"}  # eager: no graphs
    ort = plan_latency(local_target(), "measure", runtime="onnxruntime")
    assert ort.options == {"provider": "cuda", "precision": "fp16"}  # the local target's precision


# the names torch.cuda.get_device_name gives on these GPUs -> the one target each is (None: none)
CUDA_NAMES = {
    "NVIDIA H100 80GB HBM3": "h100",
    "NVIDIA H100 PCIe": "h100",
    "NVIDIA H200": "h200",
    "NVIDIA A100-SXM4-40GB": "a100",
    "NVIDIA A100 80GB PCIe": "a100",
    "NVIDIA A10": "a10",
    "NVIDIA A10G": None,  # AWS's variant of the A10: no profile of its own
    "Tesla T4": "t4",
    "NVIDIA L4": "l4",
    "Tesla V100-SXM2-16GB": "v100",
    "NVIDIA GeForce RTX 2080 Ti": "2080ti",
    "NVIDIA GeForce GTX 1080 Ti": "1080ti",
    "NVIDIA GeForce RTX 3090": "rtx3090",
    "NVIDIA GeForce RTX 4090": "rtx4090",
    "NVIDIA TITAN RTX": "titan-rtx",
    "NVIDIA TITAN Xp": "titan-xp",
    "NVIDIA TITAN X (Pascal)": "titan-x",
    "NVIDIA GeForce RTX 4080": None,
    "Xavier": None,  # a Jetson's CUDA name does not say which module it is
    "Orin": None,
}


@pytest.mark.parametrize("gpu", list(CUDA_NAMES))
def test_a_local_gpu_is_the_target_it_names(gpu: str) -> None:
    """--target h100 on an H100 measures there: torch's device name is matched to the profile even
    when the board variant differs from the profile's display name, and never to a neighbour."""
    matches = [n for n in list_targets() if gpu_name_matches(get_target(n), gpu)]
    want = CUDA_NAMES[gpu]
    assert matches == ([want] if want else []), f"{gpu!r} matched {matches}"


def test_the_local_gpu_profile_is_the_matching_target(monkeypatch) -> None:
    """The profile a local GPU's prediction is made with (beside its measurement in the report):
    the target it names, or none (``--target local`` itself has no specs to predict with)."""
    import kd_compile.latency as lat

    monkeypatch.setattr(lat, "local_gpu_name", lambda: "NVIDIA H100 80GB HBM3")
    assert lat.local_gpu_profile().name == "h100"
    monkeypatch.setattr(lat, "local_gpu_name", lambda: "NVIDIA GeForce RTX 4080")
    assert lat.local_gpu_profile() is None
    monkeypatch.setattr(lat, "local_gpu_name", lambda: None)
    assert lat.local_gpu_profile() is None


def test_predicting_the_local_gpu_uses_its_profile_or_refuses(monkeypatch) -> None:
    """``--target local --method predict`` on a GPU: predicted with the profile that is this GPU,
    never with ``local``'s placeholder specs; a GPU no profile describes is a clear error."""
    import kd_compile.latency as lat

    monkeypatch.setattr(lat, "local_gpu_name", lambda: "Tesla T4")
    monkeypatch.setattr(lat.torch.cuda, "get_device_properties", lambda i: _Props())
    plan = plan_latency(lat.local_target(), "predict")
    assert plan.method == "predict" and plan.options["target"].name == "t4"
    monkeypatch.setattr(lat, "local_gpu_name", lambda: "NVIDIA GeForce RTX 4080")
    with pytest.raises(UsageError, match="no target profile describes this GPU"):
        plan_latency(lat.local_target(), "predict")


class _Props:
    total_memory = 16 * 2**30
    multi_processor_count = 40


def test_int8_on_a_local_gpu_without_tensorrt_is_refused_when_planned():
    """Only TensorRT measures int8; without it the plan says so at once, not a profiler later."""
    import importlib.util

    from kd_compile.latency import _gpu_runtime

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here")
    with pytest.raises(UsageError, match="int8 is measured with TensorRT only"):
        _gpu_runtime(get_target("t4"), "int8")


@pytest.mark.parametrize(("starts", "provider"), [(("tensorrt", "cuda"), "tensorrt"), (("cuda",), "cuda"), ((), None)])
def test_a_local_gpu_prefers_ort_s_tensorrt_provider_then_its_cuda_one(monkeypatch, starts, provider):
    """Without the TensorRT Python package, ONNX Runtime's TensorRT provider (TensorRT's own engines)
    comes before its CUDA provider, and CUDA graphs come last; the target's precision goes with it."""
    import importlib.util

    import kd_compile.profilers.onnxrt as onnxrt
    from kd_compile.latency import _gpu_runtime

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here")
    monkeypatch.setattr(onnxrt, "provider_starts", lambda p: p in starts)  # what this machine's ORT can start
    name, opts = _gpu_runtime(get_target("t4"), "fp16")
    if provider is None:
        assert (name, opts) == ("torch", {"precision": "fp16", "device": "cuda", "cuda_graphs": True})
    else:
        assert (name, opts) == ("onnxruntime", {"provider": provider, "precision": "fp16"})
    assert _gpu_runtime(get_target("t4"), "bf16")[0] == "torch"  # neither ORT provider measures bf16
