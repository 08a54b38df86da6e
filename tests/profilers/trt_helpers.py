"""Helpers of the TensorRT backend tests: a stand-in ``tensorrt`` module, a real-TensorRT skip.

Not a test module: imported by ``test_trt_engine.py``, ``test_trt_runner.py`` and
``test_trtexec.py`` (pytest puts this folder on ``sys.path``). The fake (``make_fake_tensorrt``)
implements exactly the documented TensorRT 10 Python API calls kd-compile makes (Builder,
IBuilderConfig, OnnxParser, Runtime, ICudaEngine, IExecutionContext, EngineInspector,
IProfiler, ITimingCache) and measures nothing.
"""

from __future__ import annotations

import json
import sys
import types
from typing import Any

import onnx
import pytest
import torch

from kd_compile.profilers.tensorrt.lint import TRT_UNSUPPORTED_OPS


def make_fake_tensorrt(major: int = 10) -> types.ModuleType:
    """A stand-in ``tensorrt`` with exactly the documented TensorRT 10 (or 11) calls kd-compile uses.

    It records every call in ``trt.calls``. It builds a JSON "plan" describing the parsed ONNX
    I/O and the build settings; ``execute_async_v3`` checks that every I/O tensor has an
    address and reports one time per layer to an attached ``IProfiler``. ``major=11`` is
    TensorRT 11's strongly typed API ("Removed Python APIs and Replacements"): no
    ``BuilderFlag.FP16``/``BF16``/``INT8``, no ``IBuilderConfig.int8_calibrator`` (setting it
    raises AttributeError); its parser records the ONNX's initializer types.
    """
    trt = types.ModuleType("tensorrt")
    trt.__version__ = f"{major}.99.0-fake"
    calls: list[tuple[Any, ...]] = []
    trt.calls = calls

    def enum(name: str, *members: str) -> type:
        return type(name, (), {m: f"{name}.{m}" for m in members})

    trt.TensorIOMode = enum("TensorIOMode", "INPUT", "OUTPUT")
    trt.DataType = enum(
        "DataType", "FLOAT", "HALF", "BF16", "INT8", "INT32", "INT64", "BOOL", "UINT8"
    )
    trt.MemoryPoolType = enum("MemoryPoolType", "WORKSPACE")
    trt.BuilderFlag = (
        enum("BuilderFlag", "FP16", "BF16", "INT8", "TF32") if major < 11 else enum("BuilderFlag", "TF32")
    )
    trt.ProfilingVerbosity = enum("ProfilingVerbosity", "LAYER_NAMES_ONLY", "DETAILED", "NONE")
    trt.LayerInformationFormat = enum("LayerInformationFormat", "ONELINE", "JSON")

    class Logger:
        WARNING = "Severity.WARNING"

        def __init__(self, min_severity: str) -> None:
            self.min_severity = min_severity

    class ITensor:
        def __init__(self, name: str, shape: tuple[int, ...]) -> None:
            self.name, self.shape = name, shape

    class INetworkDefinition:
        def __init__(self, flags: int) -> None:
            self.flags = flags
            self.inputs: list[ITensor] = []
            self.outputs: list[ITensor] = []
            self.layers: list[str] = []

        @property
        def num_inputs(self) -> int:
            return len(self.inputs)

        def get_input(self, index: int) -> ITensor:
            return self.inputs[index]

    class OnnxParser:
        def __init__(self, network: INetworkDefinition, logger: Logger) -> None:
            self.network, self.errors = network, []

        def parse_from_file(self, model: str) -> bool:
            m = onnx.load(model)
            types_ = sorted({onnx.TensorProto.DataType.Name(t.data_type) for t in m.graph.initializer})
            calls.append(("parse_from_file", model) if major < 11 else ("parse_from_file", model, types_))

            def dims(vi: Any) -> tuple[int, ...]:
                return tuple(
                    d.dim_value if d.dim_value > 0 else -1 for d in vi.type.tensor_type.shape.dim
                )

            for n in m.graph.node:
                if n.op_type in TRT_UNSUPPORTED_OPS:
                    self.errors.append(
                        f"In node {n.name} (importModel): UNSUPPORTED_NODE: {n.op_type}"
                    )
            self.network.inputs = [ITensor(i.name, dims(i)) for i in m.graph.input]
            self.network.outputs = [ITensor(o.name, dims(o)) for o in m.graph.output]
            self.network.layers = [n.name or n.op_type for n in m.graph.node]
            return not self.errors

        @property
        def num_errors(self) -> int:
            return len(self.errors)

        def get_error(self, index: int) -> str:
            return self.errors[index]

    class ITimingCache:
        def __init__(self, blob: bytes) -> None:
            self.entries = int(blob.decode() or 0)

        def serialize(self) -> bytes:
            return str(self.entries).encode()

    class IOptimizationProfile:
        def __init__(self) -> None:
            self.shapes: dict[str, tuple[Any, ...]] = {}

        def set_shape(self, input: str, min: Any, opt: Any, max: Any) -> None:
            calls.append(("set_shape", input, tuple(min), tuple(opt), tuple(max)))
            self.shapes[input] = (tuple(min), tuple(opt), tuple(max))

    class IBuilderConfig:
        def __init__(self) -> None:
            self.flags: set[str] = set()
            self.pools: dict[str, int] = {}
            self.builder_optimization_level = 3
            self.profiling_verbosity = trt.ProfilingVerbosity.LAYER_NAMES_ONLY
            if major < 11:
                self.int8_calibrator = None
            self.profiles: list[IOptimizationProfile] = []
            self.timing_cache: ITimingCache | None = None

        def __setattr__(self, name: str, value: Any) -> None:
            if major >= 11 and name == "int8_calibrator":
                raise AttributeError("'tensorrt.IBuilderConfig' object has no attribute 'int8_calibrator'")
            object.__setattr__(self, name, value)

        def set_memory_pool_limit(self, pool: str, pool_size: int) -> None:
            self.pools[pool] = pool_size

        def set_flag(self, flag: str) -> None:
            self.flags.add(flag)

        def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
            self.profiles.append(profile)
            return len(self.profiles) - 1

        def create_timing_cache(self, serialized_timing_cache: bytes) -> ITimingCache:
            calls.append(("create_timing_cache", bytes(serialized_timing_cache)))
            return ITimingCache(bytes(serialized_timing_cache))

        def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
            self.timing_cache = cache
            return True

        def get_timing_cache(self) -> ITimingCache | None:
            return self.timing_cache

    class Builder:
        def __init__(self, logger: Logger) -> None:
            self.logger = logger

        def create_network(self, flags: int = 0) -> INetworkDefinition:
            return INetworkDefinition(flags)

        def create_builder_config(self) -> IBuilderConfig:
            return IBuilderConfig()

        def create_optimization_profile(self) -> IOptimizationProfile:
            return IOptimizationProfile()

        def build_serialized_network(
            self, network: INetworkDefinition, config: IBuilderConfig
        ) -> bytes | None:
            calls.append(
                (
                    "build_serialized_network",
                    sorted(config.flags),
                    config.builder_optimization_level,
                    dict(config.pools),
                    config.profiling_verbosity,
                    getattr(config, "int8_calibrator", None),
                )
            )
            if config.pools.get(trt.MemoryPoolType.WORKSPACE, 1 << 30) < 1024:
                return None  # "insufficient workspace": the documented failure is a None return
            if config.timing_cache is not None:
                config.timing_cache.entries += len(network.layers)
            (prof,) = config.profiles
            plan = {
                "inputs": [[t.name, list(prof.shapes[t.name][1])] for t in network.inputs],
                "outputs": [[t.name, list(t.shape)] for t in network.outputs],
                "layers": network.layers,
                "detailed": config.profiling_verbosity == trt.ProfilingVerbosity.DETAILED,
            }
            return json.dumps(plan).encode()

    class IProfiler:
        def __init__(self) -> None:
            pass

        def report_layer_time(self, layer_name: str, ms: float) -> None:
            raise NotImplementedError

    class IExecutionContext:
        def __init__(self, engine: ICudaEngine) -> None:
            self.engine = engine
            self.input_shapes: dict[str, tuple[int, ...]] = {}
            self.addresses: dict[str, int] = {}
            self.profiler: IProfiler | None = None
            self.executions: list[int] = []

        def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
            self.input_shapes[name] = tuple(shape)
            return True

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            if name in self.input_shapes:
                return self.input_shapes[name]
            shape = dict(self.engine.plan["outputs"])[name]
            batch = next(iter(self.input_shapes.values()))[0]
            return tuple(batch if d < 0 else d for d in shape)

        def set_tensor_address(self, name: str, memory: int) -> bool:
            assert isinstance(memory, int) and memory != 0
            self.addresses[name] = memory
            return True

        def execute_async_v3(self, stream_handle: int) -> bool:
            names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
            if set(self.addresses) != set(names):
                return False
            self.executions.append(stream_handle)
            if self.profiler is not None:
                for i, layer in enumerate(self.engine.plan["layers"]):
                    self.profiler.report_layer_time(layer, 0.01 * (i + 1) * len(self.executions))
            return True

    class EngineInspector:
        def __init__(self, engine: ICudaEngine) -> None:
            self.engine = engine
            self.execution_context: IExecutionContext | None = None

        def get_engine_information(self, format: str) -> str:
            assert format == trt.LayerInformationFormat.JSON
            layers = self.engine.plan["layers"]
            if self.engine.plan["detailed"]:
                layers = [{"Name": n, "LayerType": "FakeKernel"} for n in layers]
            return json.dumps({"Layers": layers, "Bindings": self.engine.names})

    class ICudaEngine:
        def __init__(self, plan: dict[str, Any]) -> None:
            self.plan = plan
            self.names = [n for n, _ in plan["inputs"]] + [n for n, _ in plan["outputs"]]

        @property
        def num_io_tensors(self) -> int:
            return len(self.names)

        def get_tensor_name(self, index: int) -> str:
            return self.names[index]

        def get_tensor_mode(self, name: str) -> str:
            inputs = [n for n, _ in self.plan["inputs"]]
            return trt.TensorIOMode.INPUT if name in inputs else trt.TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name: str) -> str:
            return trt.DataType.FLOAT

        def create_execution_context(self) -> IExecutionContext:
            return IExecutionContext(self)

        def create_engine_inspector(self) -> EngineInspector:
            return EngineInspector(self)

    class Runtime:
        def __init__(self, logger: Logger) -> None:
            self.logger = logger

        def deserialize_cuda_engine(self, serialized_engine: bytes) -> ICudaEngine | None:
            try:
                return ICudaEngine(json.loads(bytes(serialized_engine)))
            except ValueError:
                return None

    for cls in (Logger, Builder, OnnxParser, Runtime, IProfiler):
        setattr(trt, cls.__name__, cls)
    return trt


def install_fake_tensorrt(monkeypatch: pytest.MonkeyPatch, major: int = 10) -> types.ModuleType:
    """Put a fresh fake (TensorRT ``major``) in ``sys.modules["tensorrt"]`` for one test; return it."""
    trt = make_fake_tensorrt(major)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    return trt


def builds(trt: types.ModuleType) -> list[tuple[Any, ...]]:
    """The recorded ``build_serialized_network`` calls of a fake."""
    return [c for c in trt.calls if c[0] == "build_serialized_network"]


def real_tensorrt_or_skip() -> Any:
    """The real ``tensorrt`` module, or ``pytest.skip`` where it or a CUDA GPU is missing."""
    try:
        import tensorrt as trt
    except Exception as exc:
        pytest.skip(f"TensorRT is not installed here ({type(exc).__name__})")
    if not torch.cuda.is_available():
        pytest.skip("TensorRT tests need a CUDA GPU")
    return trt
