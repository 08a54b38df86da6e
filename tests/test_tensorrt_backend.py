"""TensorRT backend: ONNX lint, engine cache keys, trtexec command/JSON, and the builder/runner.

Three kinds of test live here:

* Plain tests of code that needs no TensorRT: the lint (on real exported ONNX files), the
  cache key, the trtexec command line and the parsers of trtexec's JSON exports (on samples
  in the documented format, written below).
* CONTRACT TESTS of our use of the TensorRT 10 Python API, run against ``FakeTensorRT``: a
  small in-test module implementing exactly the documented calls our code makes (Builder,
  IBuilderConfig, OnnxParser, Runtime, ICudaEngine, IExecutionContext, EngineInspector,
  IProfiler, ITimingCache). They check that the builder and runner drive the API as
  documented (flags, profiles, timing cache, tensor addresses, profiler callbacks). They
  measure nothing: the fake has no hardware, and the profiler refuses to report a measured
  latency without a real CUDA device, which is tested too.
* ``@pytest.mark.tensorrt`` tests that run for real only where ``tensorrt`` imports and a GPU
  exists.
"""

from __future__ import annotations

import json
import shutil
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from kd_compile.errors import BackendUnavailableError, ExportError, UsageError
from kd_compile.profilers.base import InputSpec
from kd_compile.profilers.onnx_export import export_onnx, file_sha256
from kd_compile.profilers.tensorrt import (
    TRT_OPSET_RANGE,
    TRT_SUPPORTED_OPS,
    TRT_UNSUPPORTED_OPS,
    EngineFromOnnx,
    TensorRTProfiler,
    TrtexecProfiler,
    TrtRunner,
    build_trtexec_command,
    engine_cache_key,
    layers_from_trt,
    lint_onnx_for_tensorrt,
    parse_trtexec_layer_info,
    parse_trtexec_profile,
    parse_trtexec_times,
)
from kd_compile.testing.profilers import check_measurement, tiny_cnn

SPEC = InputSpec((3, 16, 16), batch=2)


@pytest.fixture(scope="module")
def cnn_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(tiny_cnn(), SPEC, tmp_path_factory.mktemp("onnx") / "cnn.onnx").path


# --- lint ------------------------------------------------------------------------------------


def test_operator_table_is_consistent() -> None:
    assert not TRT_SUPPORTED_OPS & TRT_UNSUPPORTED_OPS
    assert {
        "Conv",
        "Gemm",
        "MatMul",
        "Softmax",
        "LayerNormalization",
        "Relu",
        "Resize",
    } <= TRT_SUPPORTED_OPS
    assert {"MaxUnpool", "Unique", "QLinearConv"} <= TRT_UNSUPPORTED_OPS
    assert TRT_OPSET_RANGE == (9, 24)


def test_lint_clean_cnn(cnn_onnx: Path) -> None:
    assert lint_onnx_for_tensorrt(cnn_onnx) == []
    assert lint_onnx_for_tensorrt(onnx.load(str(cnn_onnx))) == []


def test_lint_flags_maxunpool(tmp_path: Path) -> None:
    # (torch 2.15's TorchScript exporter cannot export nn.MaxUnpool2d, so the graph is built
    # directly, as another exporter would write it, and validated by the ONNX checker)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])
    g = helper.make_graph(
        [
            helper.make_node(
                "MaxPool", ["x"], ["p", "idx"], name="pool", kernel_shape=[2, 2], strides=[2, 2]
            ),
            helper.make_node(
                "MaxUnpool", ["p", "idx"], ["y"], name="unpool", kernel_shape=[2, 2], strides=[2, 2]
            ),
        ],
        "g",
        [x],
        [y],
    )
    path = tmp_path / "u.onnx"
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    assert lint_onnx_for_tensorrt(path) == [
        "MaxPool: `Indices` output tensor unsupported (1 node: 'pool')",
        "MaxUnpool: not supported by the TensorRT ONNX parser (1 node: 'unpool')",
    ]


def _graph_model(
    nodes: list[Any], opset: int = 17, extra_opsets: list[Any] = ()
) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    g = helper.make_graph(nodes, "g", [x], [y])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset), *extra_opsets])


def test_lint_reports_each_problem_kind() -> None:
    then_g = helper.make_graph(
        [helper.make_node("Unique", ["x"], ["u"], name="inner_unique")],
        "then",
        [],
        [helper.make_tensor_value_info("u", TensorProto.FLOAT, None)],
    )
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="ok_relu"),
        helper.make_node("Unique", ["a"], ["b"], name="uniq"),
        helper.make_node("FooBar", ["a"], ["c"], name="foo"),
        helper.make_node("FusedConv", ["a"], ["d"], name="ms", domain="com.microsoft"),
        helper.make_node(
            "MaxPool", ["a"], ["e"], name="dil", kernel_shape=[2, 2], dilations=[2, 2]
        ),
        helper.make_node("Resize", ["a", "", "s"], ["f"], name="cubic", mode="cubic"),
        helper.make_node(
            "If", ["cond"], ["y"], name="branch", then_branch=then_g, else_branch=then_g
        ),
    ]
    problems = lint_onnx_for_tensorrt(
        _graph_model(nodes, opset=8, extra_opsets=[helper.make_opsetid("com.microsoft", 1)])
    )
    text = "\n".join(problems)
    assert "opset 8: outside TensorRT's supported range 9-24" in text
    assert (
        "Unique: not supported by the TensorRT ONNX parser "
        "(3 nodes: 'uniq', 'inner_unique', 'inner_unique')" in text
    )
    assert "FooBar: not in the TensorRT ONNX operator table (1 node: 'foo')" in text
    assert "com.microsoft::FusedConv: custom-domain operator, needs a TensorRT plugin" in text
    assert "MaxPool: `dilations` must be empty or all ones (1 node: 'dil')" in text
    assert "Resize: resize mode 'cubic' unsupported" in text
    assert not any("Relu" in p or "If" in p.split(":")[0] for p in problems)
    assert problems == sorted(problems)


def test_lint_rejects_bad_argument(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        lint_onnx_for_tensorrt(tmp_path / "missing.onnx")
    with pytest.raises(UsageError):
        lint_onnx_for_tensorrt(42)


# --- engine cache key ------------------------------------------------------------------------

KEY_ARGS: dict[str, Any] = dict(
    trt_version="10.3.0",
    gpu_name="NVIDIA GeForce RTX 2080 Ti",
    precision="fp16",
    opt_level=3,
    workspace_bytes=1 << 30,
    input_shapes={"input": ((2, 3, 16, 16),) * 3},
)


def test_cache_key_is_deterministic_and_order_free() -> None:
    k = engine_cache_key("ab" * 32, **KEY_ARGS)
    assert k == engine_cache_key("ab" * 32, **dict(reversed(list(KEY_ARGS.items()))))
    assert len(k) == 64 and int(k, 16) >= 0


@pytest.mark.parametrize(
    "change",
    [
        {"trt_version": "10.4.0"},
        {"gpu_name": "NVIDIA A100-SXM4-40GB"},
        {"precision": "fp32"},
        {"opt_level": 5},
        {"workspace_bytes": None},
        {"input_shapes": {"input": ((1, 3, 16, 16), (2, 3, 16, 16), (8, 3, 16, 16))}},
        {"extra": {"calibrator": "MyCalibrator"}},
    ],
    ids=lambda d: next(iter(d)),
)
def test_cache_key_changes_with_every_component(change: dict[str, Any]) -> None:
    assert engine_cache_key("ab" * 32, **{**KEY_ARGS, **change}) != engine_cache_key(
        "ab" * 32, **KEY_ARGS
    )


def test_cache_key_changes_with_onnx_digest() -> None:
    assert engine_cache_key("ab" * 32, **KEY_ARGS) != engine_cache_key("cd" * 32, **KEY_ARGS)


# --- trtexec: command line and JSON parsing ----------------------------------------------------


def test_trtexec_command_fp16() -> None:
    cmd = build_trtexec_command(
        "/opt/trt/bin/trtexec",
        "/m/model.onnx",
        input_name="input",
        input_shape=(4, 3, 224, 224),
        precision="fp16",
        times_path="/o/t.json",
        profile_path="/o/p.json",
        layer_info_path="/o/l.json",
        warmup_ms=500,
        duration_s=5,
        iterations=200,
        opt_level=4,
        workspace_mib=2048,
        timing_cache_path="/c/timing.cache",
    )
    assert cmd == [
        "/opt/trt/bin/trtexec",
        "--onnx=/m/model.onnx",
        "--shapes=input:4x3x224x224",
        "--fp16",
        "--builderOptimizationLevel=4",
        "--memPoolSize=workspace:2048MiB",
        "--timingCacheFile=/c/timing.cache",
        "--warmUp=500",
        "--duration=5",
        "--iterations=200",
        "--noDataTransfers",
        "--useSpinWait",
        "--exportTimes=/o/t.json",
        "--profilingVerbosity=detailed",
        "--separateProfileRun",
        "--exportProfile=/o/p.json",
        "--exportLayerInfo=/o/l.json",
    ]


def test_trtexec_command_precisions() -> None:
    base = dict(input_name="x", input_shape=(1, 3, 8, 8))
    fp32 = build_trtexec_command("trtexec", "m.onnx", precision="fp32", **base)
    assert not {"--fp16", "--bf16", "--int8"} & set(fp32)
    assert "--exportTimes" not in " ".join(fp32) and "--separateProfileRun" not in fp32
    assert "--bf16" in build_trtexec_command("trtexec", "m.onnx", precision="bf16", **base)
    assert "--useCudaGraph" in build_trtexec_command(
        "trtexec", "m.onnx", use_cuda_graph=True, **base
    )
    int8 = build_trtexec_command(
        "trtexec", "m.onnx", precision="int8", calibration_cache="c.cache", **base
    )
    assert ["--int8", "--fp16", "--calib=c.cache"] == int8[3:6]
    with pytest.raises(UsageError, match="calibration cache"):
        build_trtexec_command("trtexec", "m.onnx", precision="int8", **base)
    with pytest.raises(UsageError):
        build_trtexec_command("trtexec", "m.onnx", precision="fp8", **base)


# samples in the format trtexec writes (samples/common/sampleReporting.cpp, exportJSONTrace and
# exportJSONProfile): one object per timed inference; a count header then one object per layer
TIMES_SAMPLE = [
    {
        "startEnqMs": 0.10,
        "endEnqMs": 0.15,
        "startH2dMs": 0.15,
        "endH2dMs": 0.15,
        "startComputeMs": 0.16,
        "endComputeMs": 1.36,
        "startD2hMs": 1.36,
        "endD2hMs": 1.36,
        "h2dMs": 0.0,
        "computeMs": 1.20,
        "d2hMs": 0.0,
        "latencyMs": 1.20,
    },
    {
        "startEnqMs": 1.40,
        "endEnqMs": 1.46,
        "startH2dMs": 1.46,
        "endH2dMs": 1.46,
        "startComputeMs": 1.47,
        "endComputeMs": 2.72,
        "startD2hMs": 2.72,
        "endD2hMs": 2.72,
        "h2dMs": 0.0,
        "computeMs": 1.25,
        "d2hMs": 0.0,
        "latencyMs": 1.25,
    },
    {
        "startEnqMs": 2.80,
        "endEnqMs": 2.84,
        "startH2dMs": 2.84,
        "endH2dMs": 2.84,
        "startComputeMs": 2.85,
        "endComputeMs": 4.00,
        "startD2hMs": 4.00,
        "endD2hMs": 4.00,
        "h2dMs": 0.0,
        "computeMs": 1.15,
        "d2hMs": 0.0,
        "latencyMs": 1.15,
    },
]
PROFILE_SAMPLE = [
    {"count": 50},
    {
        "name": "/conv1/Conv + /relu/Relu",
        "timeMs": 30.0,
        "averageMs": 0.6,
        "medianMs": 0.59,
        "percentage": 50.0,
    },
    {"name": "/fc/Gemm", "timeMs": 30.0, "averageMs": 0.6, "medianMs": 0.61, "percentage": 50.0},
]
LAYER_INFO_SAMPLE = {
    "Layers": [
        {
            "Name": "/conv1/Conv + /relu/Relu",
            "LayerType": "CaskConvolution",
            "Inputs": [],
            "Outputs": [],
        },
        {"Name": "/fc/Gemm", "LayerType": "CaskGemmMatrixMultiply", "Inputs": [], "Outputs": []},
    ],
    "Bindings": ["input", "output"],
}


def test_parse_trtexec_times(tmp_path: Path) -> None:
    p = tmp_path / "times.json"
    p.write_text(json.dumps(TIMES_SAMPLE))
    t = parse_trtexec_times(p)
    np.testing.assert_allclose(t["compute_ms"], [1.20, 1.25, 1.15])
    np.testing.assert_allclose(t["latency_ms"], [1.20, 1.25, 1.15])
    np.testing.assert_allclose(t["enqueue_ms"], [0.05, 0.06, 0.04], atol=1e-12)
    # older exports without computeMs: derived from the compute timestamps
    old = [{k: v for k, v in r.items() if k != "computeMs"} for r in TIMES_SAMPLE]
    np.testing.assert_allclose(
        parse_trtexec_times(json.dumps(old))["compute_ms"], [1.20, 1.25, 1.15]
    )
    with pytest.raises(ExportError):
        parse_trtexec_times("[]")
    with pytest.raises(ExportError):
        parse_trtexec_times([{"latencyMs": 1.0}])


def test_parse_trtexec_profile_and_layer_info(tmp_path: Path) -> None:
    (tmp_path / "p.json").write_text(json.dumps(PROFILE_SAMPLE))
    (tmp_path / "l.json").write_text(json.dumps(LAYER_INFO_SAMPLE))
    types_ = parse_trtexec_layer_info(tmp_path / "l.json")
    assert types_["/fc/Gemm"] == "CaskGemmMatrixMultiply"
    count, layers = parse_trtexec_profile(tmp_path / "p.json", types_)
    assert count == 50
    assert [(lc.name, lc.op, lc.latency_ms) for lc in layers] == [
        ("/conv1/Conv + /relu/Relu", "CaskConvolution", 0.6),
        ("/fc/Gemm", "CaskGemmMatrixMultiply", 0.6),
    ]
    no_avg = [PROFILE_SAMPLE[0], {"name": "L", "timeMs": 5.0, "percentage": 100.0}]
    assert parse_trtexec_profile(no_avg)[1][0].latency_ms == pytest.approx(0.1)
    with pytest.raises(ExportError):
        parse_trtexec_profile([{"name": "no count header"}])


def test_trtexec_profiler_unavailable_without_trtexec(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no trtexec
    with TrtexecProfiler() as p:
        with pytest.raises(BackendUnavailableError) as exc_info:
            p.profile(tiny_cnn(), SPEC)
    assert "trtexec" in exc_info.value.line() and "PATH" in exc_info.value.line()
    with pytest.raises(BackendUnavailableError):
        TrtexecProfiler(trtexec=str(tmp_path / "nope")).profile(tiny_cnn(), SPEC)


# --- contract tests against a fake TensorRT module (no hardware; nothing measured) ----------


def make_fake_tensorrt() -> types.ModuleType:
    """A stand-in ``tensorrt`` with exactly the documented TensorRT 10 calls kd-compile uses.

    It records every call in ``trt.calls``. It builds a JSON "plan" describing the parsed ONNX
    I/O and the build settings; ``execute_async_v3`` checks that every I/O tensor has an
    address and reports one time per layer to an attached ``IProfiler``.
    """
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.99.0-fake"
    calls: list[tuple[Any, ...]] = []
    trt.calls = calls

    def enum(name: str, *members: str) -> type:
        return type(name, (), {m: f"{name}.{m}" for m in members})

    trt.TensorIOMode = enum("TensorIOMode", "INPUT", "OUTPUT")
    trt.DataType = enum(
        "DataType", "FLOAT", "HALF", "BF16", "INT8", "INT32", "INT64", "BOOL", "UINT8"
    )
    trt.MemoryPoolType = enum("MemoryPoolType", "WORKSPACE")
    trt.BuilderFlag = enum("BuilderFlag", "FP16", "BF16", "INT8", "TF32")
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
            calls.append(("parse_from_file", model))
            m = onnx.load(model)

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
            self.int8_calibrator = None
            self.profiles: list[IOptimizationProfile] = []
            self.timing_cache: ITimingCache | None = None

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
                    config.int8_calibrator,
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


@pytest.fixture
def fake_trt(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    trt = make_fake_tensorrt()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    return trt


def _builds(trt: types.ModuleType) -> list[tuple[Any, ...]]:
    return [c for c in trt.calls if c[0] == "build_serialized_network"]


def test_contract_engine_build_and_cache(
    fake_trt: types.ModuleType, cnn_onnx: Path, tmp_path: Path
) -> None:
    """CONTRACT (fake TensorRT): builder flags, profile, timing cache, engine cache."""
    tc = tmp_path / "timing.cache"
    loader = EngineFromOnnx(
        cnn_onnx,
        "fp16",
        opt_level=4,
        workspace_bytes=1 << 28,
        timing_cache_path=tc,
        cache_dir=tmp_path / "eng",
        batch=2,
    )
    path = loader()
    assert loader.built and path.is_file() and path.parent == tmp_path / "eng"
    (build,) = _builds(fake_trt)
    assert build[1] == [fake_trt.BuilderFlag.FP16]
    assert build[2] == 4
    assert build[3] == {fake_trt.MemoryPoolType.WORKSPACE: 1 << 28}
    assert build[4] == fake_trt.ProfilingVerbosity.DETAILED
    assert ("set_shape", "input", (2, 3, 16, 16), (2, 3, 16, 16), (2, 3, 16, 16)) in fake_trt.calls
    assert ("create_timing_cache", b"") in fake_trt.calls
    assert tc.is_file() and int(tc.read_bytes()) > 0  # the grown cache was saved
    assert loader.key == engine_cache_key(
        file_sha256(cnn_onnx),
        trt_version="10.99.0-fake",
        gpu_name=torch.cuda.get_device_name() if torch.cuda.is_available() else "no-cuda-device",
        precision="fp16",
        opt_level=4,
        workspace_bytes=1 << 28,
        input_shapes={"input": ((2, 3, 16, 16),) * 3},
    )
    assert json.loads(path.with_suffix(".json").read_text())["precision"] == "fp16"

    # same settings, new loader, same folder: served from the cache, no build
    again = EngineFromOnnx(
        cnn_onnx,
        "fp16",
        opt_level=4,
        workspace_bytes=1 << 28,
        timing_cache_path=tc,
        cache_dir=tmp_path / "eng",
        batch=2,
    )
    assert again() == path and not again.built
    assert len(_builds(fake_trt)) == 1

    # another precision: a new engine, built with the saved timing cache loaded
    saved = tc.read_bytes()
    other = EngineFromOnnx(
        cnn_onnx,
        "bf16",
        opt_level=4,
        workspace_bytes=1 << 28,
        timing_cache_path=tc,
        cache_dir=tmp_path / "eng",
        batch=2,
    )
    assert other() != path and other.built
    assert _builds(fake_trt)[-1][1] == [fake_trt.BuilderFlag.BF16]
    assert ("create_timing_cache", saved) in fake_trt.calls


def test_contract_dynamic_batch_profile(
    fake_trt: types.ModuleType, cnn_onnx: Path, tmp_path: Path
) -> None:
    """CONTRACT (fake TensorRT): max_batch gives a 1..max optimisation profile."""
    EngineFromOnnx(cnn_onnx, "fp32", cache_dir=tmp_path, batch=4, max_batch=16)()
    assert ("set_shape", "input", (1, 3, 16, 16), (4, 3, 16, 16), (16, 3, 16, 16)) in fake_trt.calls
    assert _builds(fake_trt)[-1][1] == []  # fp32: no precision flag


def test_contract_int8_needs_calibrator_or_qdq(
    fake_trt: types.ModuleType, cnn_onnx: Path, tmp_path: Path
) -> None:
    """CONTRACT (fake TensorRT): int8 refused before any TensorRT call unless calibrated or Q/DQ."""
    with pytest.raises(UsageError, match="calibrator"):
        EngineFromOnnx(cnn_onnx, "int8", cache_dir=tmp_path)
    assert fake_trt.calls == []

    calibrator = object()
    EngineFromOnnx(cnn_onnx, "int8", cache_dir=tmp_path, batch=2, calibrator=calibrator)()
    build = _builds(fake_trt)[-1]
    assert build[1] == sorted([fake_trt.BuilderFlag.INT8, fake_trt.BuilderFlag.FP16])
    assert build[5] is calibrator

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 4, 4])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 4, 4])
    scale = helper.make_tensor("s", TensorProto.FLOAT, [], [0.1])
    zp = helper.make_tensor("z", TensorProto.INT8, [], [0])
    g = helper.make_graph(
        [
            helper.make_node("QuantizeLinear", ["input", "s", "z"], ["q"]),
            helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"]),
            helper.make_node("Relu", ["dq"], ["output"]),
        ],
        "qdq",
        [x],
        [y],
        initializer=[scale, zp],
    )
    qdq = tmp_path / "qdq.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(qdq))
    assert EngineFromOnnx(qdq, "int8", cache_dir=tmp_path)().is_file()


def test_contract_parse_and_build_failures(
    fake_trt: types.ModuleType, cnn_onnx: Path, tmp_path: Path
) -> None:
    """CONTRACT (fake TensorRT): parser errors and a None build become ExportError."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 4, 4])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, None)
    g = helper.make_graph(
        [helper.make_node("Unique", ["input"], ["output"], name="u")], "g", [x], [y]
    )
    bad = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(bad))
    with pytest.raises(ExportError) as exc_info:
        EngineFromOnnx(bad, "fp16", cache_dir=tmp_path)()
    line = exc_info.value.line()
    assert "UNSUPPORTED_NODE: Unique" in line and "lint: Unique: not supported" in line
    with pytest.raises(ExportError, match="failed to build"):
        EngineFromOnnx(cnn_onnx, "fp16", workspace_bytes=512, cache_dir=tmp_path, batch=2)()
    with pytest.raises(UsageError):
        EngineFromOnnx(cnn_onnx, "fp8", cache_dir=tmp_path)
    with pytest.raises(UsageError):
        EngineFromOnnx(cnn_onnx, "fp16", opt_level=9, cache_dir=tmp_path)


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
    assert _builds(fake_trt) == []  # refused before doing any work


def test_profiler_reports_missing_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails, as without the package
    with TensorRTProfiler() as p:
        with pytest.raises(BackendUnavailableError) as exc_info:
            p.profile(tiny_cnn(), SPEC)
    assert "kd-compile[tensorrt]" in exc_info.value.line()


# --- real TensorRT (only where it imports and a GPU exists) ----------------------------------


def _real_trt_or_skip() -> Any:
    try:
        import tensorrt as trt
    except Exception as exc:
        pytest.skip(f"TensorRT is not installed here ({type(exc).__name__})")
    if not torch.cuda.is_available():
        pytest.skip("TensorRT tests need a CUDA GPU")
    return trt


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_real_tensorrt_profile_fp16(tmp_path: Path) -> None:
    trt = _real_trt_or_skip()
    with TensorRTProfiler(precision="fp16", cache_dir=tmp_path, min_time_s=0.2, min_iters=20) as p:
        m = p.profile(tiny_cnn(), SPEC)
        again = p.profile(tiny_cnn(), SPEC)
    check_measurement(m, SPEC)
    assert m.runtime == "tensorrt" and m.device.startswith("cuda:")
    assert m.extra["trt_version"] == trt.__version__ and m.extra["engine_built"]
    assert not again.extra["engine_built"]  # same weights: engine from the cache
    assert m.layers and all(lc.latency_ms is not None for lc in m.layers)


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_real_trtexec_profile(tmp_path: Path) -> None:
    if shutil.which("trtexec") is None:
        pytest.skip("trtexec is not on PATH")
    _real_trt_or_skip()
    with TrtexecProfiler(precision="fp16", duration_s=1, warmup_ms=100, cache_dir=tmp_path) as p:
        m = p.profile(tiny_cnn(), SPEC)
    check_measurement(m, SPEC)
    assert m.extra["tool"] == "trtexec" and m.layers
