"""Running TensorRT engines: ``TrtRunner``, per-layer times, and the ``"tensorrt"`` profiler.

Written against the documented TensorRT 10 Python API (``Runtime``, ``ICudaEngine``,
``IExecutionContext``, ``EngineInspector``, ``IProfiler``); ``tensorrt`` is imported lazily.

* ``TrtRunner`` deserializes an engine, allocates I/O buffers with torch (no pycuda), binds
  them with ``set_tensor_address`` and runs ``execute_async_v3`` on a torch CUDA stream.
* ``TensorRTProfiler`` (``"tensorrt"``) times the runner with CUDA events under the shared
  ``TimingPolicy`` (default ``DEFAULT_TIMING``), takes per-layer times from an ``IProfiler`` in
  a separate profiled run (the profiler perturbs timing) and per-layer information from the
  engine inspector (``layers_from_trt``). It refuses to run without a real CUDA device, so no
  Measurement with ``method="measured"`` is ever produced off-GPU.
"""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ...errors import BackendUnavailableError, ExportError, UsageError
from ..base import InputSpec, LayerCost, Measurement, Profiler, register_profiler
from ..devices import cuda_device
from ..onnx_export import OnnxFromModule
from ..timing import TimingPolicy, TimingResult, measurement_from_timing, resolve_timing, time_steps
from ..workdir import WorkDir
from .engine import EngineFromOnnx, check_precision, load_tensorrt
from .lint import lint_onnx_for_tensorrt

# 20 warm-up runs, then 100..5000 runs over 1..60 s until the median's relative SE is below 2%
DEFAULT_TIMING = TimingPolicy(warmup=20, min_iters=100, max_iters=5000, rel_se=0.02)


def _torch_dtype(trt: Any, dt: Any) -> torch.dtype:
    table = {
        "FLOAT": torch.float32,
        "HALF": torch.float16,
        "BF16": torch.bfloat16,
        "INT8": torch.int8,
        "INT32": torch.int32,
        "INT64": torch.int64,
        "BOOL": torch.bool,
        "UINT8": torch.uint8,
    }
    for name, tdt in table.items():
        if hasattr(trt.DataType, name) and dt == getattr(trt.DataType, name):
            return tdt
    raise ExportError(f"TensorRT tensor type {dt} has no torch equivalent")


def make_layer_profiler(trt: Any) -> Any:
    """An ``IProfiler`` that accumulates ``report_layer_time`` per layer name.

    The class is made here because its base class lives in the lazily imported module.
    """

    class LayerTimes(trt.IProfiler):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            # the documented way: explicitly initialise the pybind base class
            trt.IProfiler.__init__(self)
            self.times_ms: dict[str, list[float]] = defaultdict(list)
            self.order: list[str] = []

        def report_layer_time(self, layer_name: str, ms: float) -> None:
            if layer_name not in self.times_ms:
                self.order.append(layer_name)
            self.times_ms[layer_name].append(float(ms))

    return LayerTimes()


class TrtRunner:
    """Run a serialized TensorRT engine with torch-allocated I/O buffers.

    Args:
        engine: path to a serialized engine, or its bytes.
        input_spec: the input shape to bind (batch within the engine's profile).
        device: torch device of the buffers (``cuda`` for real TensorRT).
    """

    def __init__(
        self, engine: str | Path | bytes, input_spec: InputSpec, device: str | torch.device = "cuda"
    ) -> None:
        trt = self.trt = load_tensorrt()
        blob = Path(engine).read_bytes() if isinstance(engine, (str, Path)) else bytes(engine)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(blob)
        if self.engine is None:
            raise ExportError("TensorRT could not deserialize the engine (other version or GPU?)")
        self.context = self.engine.create_execution_context()
        self.device = torch.device(device)
        self.inputs: dict[str, torch.Tensor] = {}
        self.outputs: dict[str, torch.Tensor] = {}
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        in_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if len(in_names) != 1:
            raise UsageError(f"TrtRunner supports engines with one input, got {in_names}")
        shape = (input_spec.batch, *input_spec.shape)
        for name in in_names:
            self.context.set_input_shape(name, shape)
        # output shapes are known only once every input shape is set
        for name in names:
            dims = tuple(int(d) for d in self.context.get_tensor_shape(name))
            dtype = _torch_dtype(trt, self.engine.get_tensor_dtype(name))
            if name in in_names:
                x = input_spec.example(self.device).to(dtype)
                buf = x.contiguous()
                self.inputs[name] = buf
            else:
                buf = torch.empty(dims, dtype=dtype, device=self.device)
                self.outputs[name] = buf
            self.context.set_tensor_address(name, buf.data_ptr())

    def execute(self, stream_handle: int) -> None:
        """Enqueue one inference on CUDA stream ``stream_handle`` (``Stream.cuda_stream``)."""
        if not self.context.execute_async_v3(stream_handle):
            raise RuntimeError("TensorRT execute_async_v3 returned False")

    def layer_info(self) -> list[dict[str, Any]]:
        """Per-layer information from the engine inspector (JSON format), one dict a layer."""
        inspector = self.engine.create_engine_inspector()
        inspector.execution_context = self.context
        doc = json.loads(inspector.get_engine_information(self.trt.LayerInformationFormat.JSON))
        layers = doc.get("Layers", []) if isinstance(doc, dict) else []
        # with ProfilingVerbosity.LAYER_NAMES_ONLY the layers are plain strings
        return [x if isinstance(x, dict) else {"Name": str(x)} for x in layers]

    def profile_layers(self, stream_handle: int, runs: int, sync: Any) -> dict[str, float]:
        """Mean per-layer time (ms) over ``runs`` profiled executions; ``sync()`` waits for them."""
        prof = make_layer_profiler(self.trt)
        self.context.profiler = prof
        try:
            for _ in range(runs):
                self.execute(stream_handle)
                sync()
        finally:
            self.context.profiler = None
        return {name: float(np.mean(prof.times_ms[name])) for name in prof.order}


def layers_from_trt(
    info: list[dict[str, Any]], times_ms: dict[str, float]
) -> tuple[LayerCost, ...]:
    """LayerCost per engine layer, joining inspector info and profiled times by layer name."""
    out = []
    seen = set()
    for d in info:
        name = str(d.get("Name", ""))
        seen.add(name)
        out.append(
            LayerCost(name=name, op=str(d.get("LayerType", "")), latency_ms=times_ms.get(name))
        )
    for name, ms in times_ms.items():
        if name not in seen:  # e.g. reformatting layers reported only by the profiler
            out.append(LayerCost(name=name, op="", latency_ms=ms))
    return tuple(out)


def require_cuda(what: str) -> None:
    """Refuse (BackendUnavailableError) unless torch sees a real CUDA device."""
    if not torch.cuda.is_available():
        raise BackendUnavailableError(
            f"{what} needs a CUDA GPU and torch.cuda.is_available() is False; "
            "no measured TensorRT latency can be reported on this machine",
            hint="run on a machine with an NVIDIA GPU, or use the 'roofline' profiler to predict",
        )


@register_profiler("tensorrt")
class TensorRTProfiler(Profiler):
    """Measured TensorRT latency on the local GPU, with per-layer times.

    Args:
        precision: fp32/fp16/bf16/int8 (int8 needs ``calibrator`` or a Q/DQ model).
        opt_level: ``builder_optimization_level``.
        workspace_bytes: workspace pool limit (``None``: TensorRT's default).
        cache_dir: engine and ONNX cache folder (private temporary folder when ``None``).
        timing_cache_path: builder timing cache file shared across builds.
        layer_profile: also run an ``IProfiler`` pass for per-layer times.
        layer_runs: profiled executions averaged per layer.
        calibrator: ``IInt8Calibrator`` for int8.
        timing: the timing policy (``DEFAULT_TIMING`` when ``None``); runs are timed with CUDA
            events, so its clock must be ``"wall"``.
        **timing_kw: overrides of single policy fields, also the older keywords ``warmup``,
            ``min_iters``, ``max_iters``, ``min_time_s``, ``max_time_s``, ``target_cv``.
    """

    name = "tensorrt"

    def __init__(
        self,
        precision: str = "fp16",
        opt_level: int = 3,
        workspace_bytes: int | None = None,
        cache_dir: str | Path | None = None,
        timing_cache_path: str | Path | None = None,
        layer_profile: bool = True,
        layer_runs: int = 10,
        calibrator: Any = None,
        *,
        timing: TimingPolicy | None = None,
        **timing_kw: Any,
    ) -> None:
        check_precision(precision)
        self.timing = resolve_timing(timing, DEFAULT_TIMING, **timing_kw)
        if self.timing.clock != "wall":
            raise UsageError("the tensorrt profiler times with CUDA events: clock must be 'wall'")
        self.precision = precision
        self.opt_level = opt_level
        self.workspace_bytes = workspace_bytes
        self._dir = WorkDir(cache_dir, "kd-trt-")
        self.cache_dir = self._dir.path
        self.timing_cache_path = (
            self.cache_dir / "timing.cache"
            if timing_cache_path is None
            else Path(timing_cache_path)
        )
        self.layer_profile = layer_profile
        self.layer_runs = layer_runs
        self.calibrator = calibrator

    def _impl(self, model: nn.Module, input_spec: InputSpec) -> Measurement:
        trt = load_tensorrt()  # a missing TensorRT is reported before the GPU check
        require_cuda("the tensorrt profiler")
        onnx_path = OnnxFromModule(model, input_spec, cache_dir=self.cache_dir / "onnx")()
        lint = lint_onnx_for_tensorrt(onnx_path)
        loader = EngineFromOnnx(
            onnx_path,
            self.precision,
            self.opt_level,
            self.workspace_bytes,
            self.timing_cache_path,
            self.cache_dir / "engines",
            batch=input_spec.batch,
            calibrator=self.calibrator,
        )
        engine_path = loader()
        runner = TrtRunner(engine_path, input_spec, "cuda")
        stream = torch.cuda.Stream()
        handle = stream.cuda_stream
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)

        def step() -> float:
            start.record(stream)
            runner.execute(handle)
            end.record(stream)
            end.synchronize()
            return float(start.elapsed_time(end))

        result: TimingResult = time_steps(step, self.timing)
        layers: tuple[LayerCost, ...] = ()
        if self.layer_profile:
            times = runner.profile_layers(handle, self.layer_runs, stream.synchronize)
            layers = layers_from_trt(runner.layer_info(), times)
        m = measurement_from_timing(
            result,
            device=cuda_device(),
            runtime="tensorrt",
            precision=self.precision,
            batch=input_spec.batch,
            threads=None,
            extra={
                "trt_version": str(trt.__version__),
                "engine_key": loader.key,
                "engine_built": loader.built,
                "build_s": loader.build_s,
                "opt_level": self.opt_level,
                "timer": "cuda_events",
                "lint": lint,
            },
        )
        return dataclasses.replace(m, layers=layers)

    def close(self) -> None:
        """Remove the private cache folder (ONNX, engines, timing cache), if any. Idempotent."""
        self._dir.close()


__all__ = [
    "DEFAULT_TIMING",
    "TensorRTProfiler",
    "TrtRunner",
    "layers_from_trt",
    "make_layer_profiler",
    "require_cuda",
]
