"""ONNX Runtime profiler (``kd_compile.profilers.onnxrt``): export cache, threads, clocks, policy."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn

from kd_compile.errors import UsageError
from kd_compile.profilers import InputSpec, TimingPolicy
from kd_compile.profilers.onnx_export import export_onnx
from kd_compile.profilers.onnxrt import OnnxRuntimeProfiler, physical_cores, profile_onnx
from kd_compile.testing.profilers import check_measurement, tiny_cnn

SPEC = InputSpec((3, 16, 16), batch=2)
FAST = TimingPolicy(warmup=2, min_iters=5, max_iters=200, min_time_s=0.05, max_time_s=2.0)


def test_onnxruntime_profiler_caches_export_by_model_state(tmp_path: Path) -> None:
    model = tiny_cnn()
    with OnnxRuntimeProfiler(threads=1, cache_dir=tmp_path, timing=FAST) as p:
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
    with OnnxRuntimeProfiler(timing=FAST) as p:
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
    with OnnxRuntimeProfiler(threads=1, timing=FAST) as p:
        t_small = p.profile(small, spec).latency_ms
        t_big = p.profile(big, spec).latency_ms
    assert t_big > 3 * t_small


def test_profile_onnx_reads_shape_from_file(tmp_path: Path) -> None:
    info = export_onnx(
        tiny_cnn(), InputSpec((3, 16, 16), batch=1), tmp_path / "m.onnx", dynamic_batch=False
    )
    m = profile_onnx(info.path, threads=1, timing=FAST)
    assert m.batch == 1 and m.method == "measured"
    assert m.extra["onnx_sha256"] == info.sha256
    m4 = profile_onnx(
        info.path.parent / "m.onnx", InputSpec((3, 16, 16), batch=1), threads=1, timing=FAST
    )
    check_measurement(m4, InputSpec((3, 16, 16), batch=1))
    with pytest.raises(UsageError):
        profile_onnx(tmp_path / "missing.onnx")


def test_onnxruntime_cpu_clock(tmp_path: Path) -> None:
    """clock='cpu' times the calling thread's CPU time and is refused unless threads=1."""
    model = tiny_cnn()
    with OnnxRuntimeProfiler(threads=1, cache_dir=tmp_path, timing=FAST.replace(clock="cpu")) as p:
        m = p.profile(model, SPEC)
    assert m.extra["clock"] == "cpu" and m.extra["timer"] == "thread_time"
    check_measurement(m, SPEC)
    with pytest.raises(UsageError, match="threads=1"):
        OnnxRuntimeProfiler(threads=2, clock="cpu")
    with pytest.raises(UsageError):
        OnnxRuntimeProfiler(threads=1, clock="sundial")


def test_onnxruntime_rejects_bad_settings() -> None:
    with pytest.raises(UsageError, match="fp32 on the CPU"):
        OnnxRuntimeProfiler(precision="fp16")  # the CPU provider: fp32 only
    with pytest.raises(UsageError, match="precision 'bf16'"):
        OnnxRuntimeProfiler(precision="bf16", provider="cuda")
    with pytest.raises(UsageError):
        OnnxRuntimeProfiler(threads=0)
    assert OnnxRuntimeProfiler(precision="fp16", provider="cuda").precision == "fp16"  # a GPU provider: fp16 too


def test_the_fp16_graph_keeps_fp32_io_and_computes_the_same_function(tmp_path: Path) -> None:
    """What a GPU provider runs for fp16: weights in fp16, input and output still fp32 (casts at
    the ends), the same outputs within fp16 rounding; converted once, then reused."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto

    from kd_compile.profilers.onnxrt import to_fp16

    model = tiny_cnn().eval()
    info = export_onnx(model, SPEC, tmp_path / "m.onnx")
    half = to_fp16(info.path)
    assert half == tmp_path / "m.fp16.onnx" and half.is_file()
    g = onnx.load(str(half))
    onnx.checker.check_model(g)
    assert [i.type.tensor_type.elem_type for i in (*g.graph.input, *g.graph.output)] == [TensorProto.FLOAT] * 2
    weights = [t for t in g.graph.initializer if len(t.dims) == 4]
    assert weights and all(t.data_type == TensorProto.FLOAT16 for t in weights)
    mtime = half.stat().st_mtime_ns
    assert to_fp16(info.path) == half and half.stat().st_mtime_ns == mtime  # reused, not rewritten
    x = SPEC.example("cpu")
    sess = ort.InferenceSession(str(half), providers=["CPUExecutionProvider"])
    y = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        ref = model(x).numpy()
    assert y.dtype == np.float32 and np.allclose(y, ref, rtol=1e-2, atol=1e-2)
    assert not np.array_equal(y, ref)  # it did run in half precision


def test_onnxruntime_old_keywords_still_work(tmp_path: Path) -> None:
    """The pre-TimingPolicy keywords (used by api.py and benchmarks) override the policy."""
    old = dict(warmup=2, min_iters=5, max_iters=200, min_time_s=0.05, max_time_s=2.0)
    with OnnxRuntimeProfiler(threads=1, cache_dir=tmp_path, clock="cpu", target_cv=0.5, **old) as p:
        assert p.timing == FAST.replace(clock="cpu", rel_se=0.5)
        m = p.profile(tiny_cnn(), SPEC)
    assert m.extra["clock"] == "cpu"
    assert m.iterations >= FAST.min_iters
    m = profile_onnx(export_onnx(tiny_cnn(), SPEC, tmp_path / "k.onnx").path, SPEC, threads=1, **old)
    check_measurement(m, SPEC)
    with pytest.raises(UsageError, match="unknown timing option"):
        OnnxRuntimeProfiler(min_tim_s=1.0)


def test_onnxruntime_fixed_policy_runs_exactly_n() -> None:
    with OnnxRuntimeProfiler(threads=1, timing=TimingPolicy.fixed(7, warmup=1)) as p:
        m = p.profile(tiny_cnn(), SPEC)
    assert m.iterations == 7 and m.extra["stopped_by"] == "max_iters" and m.extra["warmup"] == 1


def test_onnxruntime_private_folder_removed_on_close(tmp_path: Path) -> None:
    """Without cache_dir exports go to a private temporary folder that close() removes."""
    with OnnxRuntimeProfiler(threads=1, timing=FAST) as p:
        p.profile(tiny_cnn(), SPEC)
        private = p.cache_dir
        assert private.name.startswith("kd-ort-") and list(private.glob("*.onnx"))
    assert not private.exists()
    with OnnxRuntimeProfiler(threads=1, cache_dir=tmp_path, timing=FAST) as p:
        p.profile(tiny_cnn(), SPEC)
    assert list(tmp_path.glob("*.onnx"))  # the caller's folder is kept


def test_a_gpu_provider_that_falls_back_to_the_cpu_is_refused(tmp_path: Path, monkeypatch) -> None:
    """ORT runs a session on the CPU, with only a log line, when the GPU provider it was asked
    for does not start; nothing timed on that session may be called a GPU measurement. (Here the
    CPU build is told it has CUDA: ORT then builds the session on the CPU, as it does when
    onnxruntime-gpu cannot load its CUDA libraries.)"""
    import kd_compile.profilers.onnxrt as onnxrt
    from kd_compile.errors import BackendUnavailableError

    if "cuda" in onnxrt.available_providers():
        pytest.skip("this ONNX Runtime has CUDA")
    info = export_onnx(tiny_cnn(), InputSpec((3, 16, 16), batch=1), tmp_path / "m.onnx", dynamic_batch=False)
    monkeypatch.setattr(onnxrt, "available_providers", lambda: ["cpu", "cuda"])
    with pytest.raises(BackendUnavailableError, match="could not start CUDAExecutionProvider"):
        onnxrt.make_session(info.path, 1, "cuda")
    assert "CPUExecutionProvider" in onnxrt.make_session(info.path, 1, "cpu").get_providers()


def test_a_provider_is_used_only_if_it_starts(monkeypatch) -> None:
    """The measuring runtime for a local GPU picks ORT CUDA only when its provider starts a real
    session: listed but unable to start (the CPU build told it has CUDA) is not enough."""
    import kd_compile.profilers.onnxrt as onnxrt

    assert onnxrt.provider_starts("cpu")
    if "cuda" in onnxrt.available_providers():
        pytest.skip("this ONNX Runtime has CUDA")
    monkeypatch.setattr(onnxrt, "available_providers", lambda: ["cpu", "cuda"])
    onnxrt.provider_starts.cache_clear()
    try:
        assert not onnxrt.provider_starts("cuda")
    finally:
        onnxrt.provider_starts.cache_clear()


def test_ort_tensorrt_provider_options_keep_engines_in_the_cache(tmp_path: Path, monkeypatch) -> None:
    from kd_compile.profilers.onnxrt import trt_provider_options

    monkeypatch.setenv("KD_COMPILE_CACHE", str(tmp_path))
    opts = trt_provider_options(fp16=True)
    assert opts["trt_fp16_enable"] is True and trt_provider_options(fp16=False)["trt_fp16_enable"] is False
    assert opts["trt_engine_cache_enable"] and opts["trt_timing_cache_enable"]
    assert Path(opts["trt_engine_cache_path"]) == Path(opts["trt_timing_cache_path"]) == tmp_path / "ort-trt"
    assert (tmp_path / "ort-trt").is_dir()


@pytest.mark.parametrize("provider", ["cuda", "tensorrt"])
def test_fp16_on_a_gpu_provider_runs_the_fp16_graph(tmp_path: Path, monkeypatch, provider: str) -> None:
    """fp16 on either GPU provider opens its session on the fp16-converted graph (fp32 at its ends):
    a TensorRT 11 engine takes its precision from the graph, so ``trt_fp16_enable`` alone would
    build fp32 there. The session itself needs a GPU; what it is given is checked here."""
    import onnx

    import kd_compile.profilers.onnxrt as onnxrt

    given: dict[str, object] = {}

    class Opened(Exception):
        pass

    def record(path, threads=None, provider="cpu", fp16=False):
        given.update(path=Path(path), provider=provider, fp16=fp16)
        raise Opened

    monkeypatch.setattr(onnxrt, "make_session", record)
    with OnnxRuntimeProfiler(provider=provider, precision="fp16", cache_dir=tmp_path, timing=FAST) as p:
        with pytest.raises(Opened):
            p.profile(tiny_cnn(), SPEC)
    path = given["path"]
    assert isinstance(path, Path) and path.name.endswith(".fp16.onnx") and given == {
        "path": path, "provider": provider, "fp16": True}
    model = onnx.load(str(path))
    assert {t.data_type for t in model.graph.initializer if t.dims} == {onnx.TensorProto.FLOAT16}
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert onnxrt.trt_provider_options(fp16=True)["trt_fp16_enable"] is True  # what a TensorRT 10 build reads


@pytest.mark.gpu
@pytest.mark.parametrize(("provider", "runtime"), [("cuda", "onnxruntime"), ("tensorrt", "tensorrt")])
def test_a_gpu_provider_measures_fp16(tmp_path: Path, provider: str, runtime: str) -> None:
    """fp16 on ORT's CUDA and TensorRT providers runs the converted graph (a TensorRT 11 engine takes
    its precision from the graph); on the TensorRT provider TensorRT's engines run it, which makes it
    a TensorRT measurement."""
    import kd_compile.profilers.onnxrt as onnxrt

    if not onnxrt.provider_starts(provider):
        pytest.skip(f"needs ONNX Runtime's {onnxrt.PROVIDERS[provider]} on a CUDA GPU")
    with OnnxRuntimeProfiler(provider=provider, precision="fp16", cache_dir=tmp_path, timing=FAST) as p:
        m = p.profile(tiny_cnn(), SPEC)
    check_measurement(m, SPEC)
    assert m.runtime == runtime and m.precision == "fp16" and m.device.startswith("cuda")
    assert m.extra["provider"] == onnxrt.PROVIDERS[provider]
    assert list(tmp_path.glob("*.fp16.onnx"))
