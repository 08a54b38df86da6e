"""TensorRT 10: ONNX lint, cached engine builds, and two measured profilers.

Written against the documented TensorRT 10 Python API (docs.nvidia.com/deeplearning/tensorrt,
Python API reference: ``Builder``, ``IBuilderConfig``, ``OnnxParser``, ``Runtime``,
``ICudaEngine``, ``IExecutionContext``, ``EngineInspector``, ``IProfiler``, ``ITimingCache``).
``tensorrt`` is imported lazily; without it ``import kd_compile`` and the lint still work.

Parts:

* ``lint_onnx_for_tensorrt`` flags ONNX nodes the TensorRT ONNX parser does not support, from
  the operator table of onnx-tensorrt ``docs/operators.md`` (TensorRT 10.15, opset 9 to 24),
  embedded below as data. Runs without TensorRT.
* ``engine_cache_key`` / ``EngineFromOnnx``: Polygraphy-style lazy loader that builds a
  serialized engine once and caches it under a key made of sha256(ONNX), TensorRT version, GPU
  name and every build flag; the builder's timing cache is loaded and saved when a path is
  given. INT8 needs a calibrator or an explicitly quantized (Q/DQ) ONNX, otherwise it is
  refused before any build starts.
* ``TrtRunner``: deserializes an engine, allocates I/O buffers with torch (no pycuda), binds
  them with ``set_tensor_address`` and runs ``execute_async_v3`` on a torch CUDA stream.
* ``TensorRTProfiler`` (``"tensorrt"``): CUDA-event timing of the runner, per-layer times from
  an ``IProfiler`` in a separate profiled run (the profiler perturbs timing), per-layer
  information from the engine inspector. It refuses to run without a real CUDA device, so no
  Measurement with ``method="measured"`` is ever produced off-GPU.
* ``TrtexecProfiler`` (``"trtexec"``): shells out to ``trtexec`` and parses its
  ``--exportTimes`` / ``--exportProfile`` / ``--exportLayerInfo`` JSON files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
import subprocess
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ..errors import BackendUnavailableError, ExportError, UsageError
from .base import InputSpec, LayerCost, Measurement, Profiler, lazy_import, register_profiler
from .onnx_export import ONNX_HINT, OnnxFromModule, file_sha256
from .torch_timer import (
    TimingResult,
    cuda_device,
    latency_stats,
    measurement_from_timing,
    time_adaptive,
)

TRT_HINT = "pip install kd-compile[tensorrt] on a machine with NVIDIA's TensorRT 10"
TRTEXEC_HINT = "install TensorRT 10 and put its bin/ folder (with trtexec) on PATH"
PRECISIONS = ("fp32", "fp16", "bf16", "int8")

# ---------------------------------------------------------------------------------------------
# ONNX operator support of the TensorRT ONNX parser, as data.
# Source: onnx/onnx-tensorrt, docs/operators.md, "TensorRT 10.15 supports operators in the
# inclusive range of opset 9 to opset 24" (https://github.com/onnx/onnx-tensorrt/blob/main/
# docs/operators.md). "Y" rows go to TRT_SUPPORTED_OPS, "N" rows to TRT_UNSUPPORTED_OPS.
# ---------------------------------------------------------------------------------------------
TRT_OPS_SOURCE = "onnx/onnx-tensorrt docs/operators.md (TensorRT 10.15, opset 9-24)"
TRT_OPSET_RANGE = (9, 24)

TRT_SUPPORTED_OPS: frozenset[str] = frozenset(
    """
    Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh Attention AveragePool
    BatchNormalization BlackmanWindow Cast CastLike Ceil Celu Clip Concat Constant
    ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DeformConv DepthToSpace DequantizeLinear
    Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements
    GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual
    GridSample GroupNormalization GRU HammingWindow HannWindow HardSigmoid HardSwish Hardmax
    Identity If ImageScaler InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less
    LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean
    MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad
    ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform
    RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax
    ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize
    ReverseSequence RMSNormalization RNN RoiAlign RotaryEmbedding Round STFT ScaledTanh Scan
    Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax
    Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh TensorScatter
    ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
    """.split()
)

TRT_UNSUPPORTED_OPS: frozenset[str] = frozenset(
    """
    AffineGrid Bernoulli BitShift BitwiseAnd BitwiseNot BitwiseOr BitwiseXor Col2Im
    CenterCropPad Compress ConcatFromSequence ConvInteger DFT Det DynamicQuantizeLinear
    ImageDecoder MatMulInteger MaxRoiPool MaxUnpool MelWeightMatrix Multinomial
    NegativeLogLikelihoodLoss Optional OptionalGetElement OptionalHasElement QLinearConv
    QLinearMatMul RegexFullMatch SequenceAt SequenceConstruct SequenceEmpty SequenceErase
    SequenceInsert SequenceLength SequenceMap SoftmaxCrossEntropyLoss SplitToSequence
    StringConcat StringNormalizer StringSplit TfIdfVectorizer Unique
    """.split()
)


def _attr(node: Any, name: str, default: Any = None) -> Any:
    onnx = lazy_import("onnx", ONNX_HINT)
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _restriction(node: Any) -> str | None:
    """The documented per-operator restriction this node breaks, if one is checkable statically."""
    op = node.op_type
    if op in ("MaxPool", "AveragePool", "LpPool"):
        dil = _attr(node, "dilations")
        if dil and any(int(d) != 1 for d in dil):
            return "`dilations` must be empty or all ones"
        if op == "MaxPool" and len(node.output) > 1 and node.output[1]:
            return "`Indices` output tensor unsupported"
    if op == "LayerNormalization" and any(o for o in list(node.output)[1:]):
        return "only the first output `Y` is supported"
    if op == "Resize":
        mode = _attr(node, "mode", b"nearest")
        mode = mode.decode() if isinstance(mode, bytes) else str(mode)
        if mode not in ("nearest", "linear"):
            return f"resize mode '{mode}' unsupported (supported: nearest, linear)"
        if int(_attr(node, "antialias", 0) or 0):
            return "antialiasing is not supported"
    if op == "ScatterND":
        red = _attr(node, "reduction", b"none")
        red = red.decode() if isinstance(red, bytes) else str(red)
        if red != "none":
            return "`reduction` other than `none` is not supported"
    if op == "TopK" and int(_attr(node, "sorted", 1)) != 1:
        return "`sorted` must be 1"
    if op == "Dropout" and len(node.input) > 2 and node.input[2]:
        return "`is_training` must be an initializer evaluating to False"
    return None


def _iter_nodes(graph: Any) -> Iterable[Any]:
    onnx = lazy_import("onnx", ONNX_HINT)
    for node in graph.node:
        yield node
        for a in node.attribute:
            # bodies of If/Loop/Scan are parsed by TensorRT too
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _iter_nodes(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for g in a.graphs:
                    yield from _iter_nodes(g)


def lint_onnx_for_tensorrt(onnx_path_or_model: str | Path | Any) -> list[str]:
    """List the reasons TensorRT's ONNX parser would reject (part of) a model.

    Checks every node (including If/Loop/Scan bodies) against the onnx-tensorrt operator
    table for TensorRT 10.15 (``TRT_OPS_SOURCE``): operators marked unsupported, operators the
    table does not list, operators of non-default domains (need a plugin), statically
    checkable restrictions (pool dilations, MaxPool indices, Resize modes, ...), and the
    supported opset range 9-24. The table says a "Y" does not promise every configuration
    builds, so an empty list means "nothing known to fail", not a guarantee.

    Args:
        onnx_path_or_model: path to an ``.onnx`` file or an ``onnx.ModelProto``.

    Returns:
        One message per problem kind, sorted, e.g.
        ``"MaxUnpool: not supported by the TensorRT ONNX parser (1 node: 'unpool')"``.
    """
    onnx = lazy_import("onnx", ONNX_HINT)
    if isinstance(onnx_path_or_model, (str, Path)):
        p = Path(onnx_path_or_model)
        if not p.is_file():
            raise UsageError(f"ONNX file not found: {p}")
        model = onnx.load(str(p), load_external_data=False)
    elif isinstance(onnx_path_or_model, onnx.ModelProto):
        model = onnx_path_or_model
    else:
        raise UsageError(
            "lint_onnx_for_tensorrt needs a path or onnx.ModelProto, "
            f"got {type(onnx_path_or_model).__name__}"
        )
    problems: dict[str, list[str]] = defaultdict(list)
    lo, hi = TRT_OPSET_RANGE
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx") and not lo <= imp.version <= hi:
            problems[f"opset {imp.version}: outside TensorRT's supported range {lo}-{hi}"].append(
                ""
            )
    for i, node in enumerate(_iter_nodes(model.graph)):
        name = node.name or f"#{i}"
        op = node.op_type
        if node.domain not in ("", "ai.onnx"):
            problems[
                f"{node.domain}::{op}: custom-domain operator, needs a TensorRT plugin"
            ].append(name)
        elif op in TRT_UNSUPPORTED_OPS:
            problems[f"{op}: not supported by the TensorRT ONNX parser"].append(name)
        elif op not in TRT_SUPPORTED_OPS:
            problems[f"{op}: not in the TensorRT ONNX operator table"].append(name)
        else:
            why = _restriction(node)
            if why:
                problems[f"{op}: {why}"].append(name)
    out = []
    for msg, nodes in problems.items():
        nodes = [n for n in nodes if n]
        if nodes:
            shown = ", ".join(repr(n) for n in nodes[:3]) + (", ..." if len(nodes) > 3 else "")
            msg = f"{msg} ({len(nodes)} node{'s' if len(nodes) > 1 else ''}: {shown})"
        out.append(msg)
    return sorted(out)


# ---------------------------------------------------------------------------------------------
# Engine building and caching
# ---------------------------------------------------------------------------------------------


def engine_cache_key(
    onnx_sha256: str,
    *,
    trt_version: str,
    gpu_name: str,
    precision: str,
    opt_level: int,
    workspace_bytes: int | None,
    input_shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] | None = None,
    extra: dict[str, Any] | None = None,
) -> str:
    """The cache key of a serialized engine: sha256 over everything the plan depends on.

    A serialized engine is only valid for the TensorRT version and GPU model it was built
    with, and differs with precision, optimisation level, workspace limit and optimisation
    profile shapes; all of these are part of the key.

    Args:
        onnx_sha256: hex digest of the ONNX file.
        trt_version: ``tensorrt.__version__``.
        gpu_name: ``torch.cuda.get_device_name()``.
        precision: fp32/fp16/bf16/int8.
        opt_level: ``builder_optimization_level``.
        workspace_bytes: workspace pool limit (``None``: TensorRT's default).
        input_shapes: ``{input: (min, opt, max)}`` of the optimisation profile.
        extra: any other build setting (calibration cache digest, ...).

    Returns:
        64-character hex digest.
    """
    doc = {
        "onnx_sha256": onnx_sha256,
        "trt_version": trt_version,
        "gpu_name": gpu_name,
        "precision": precision,
        "opt_level": int(opt_level),
        "workspace_bytes": None if workspace_bytes is None else int(workspace_bytes),
        "input_shapes": {
            k: [list(map(int, s)) for s in v] for k, v in sorted((input_shapes or {}).items())
        },
        "extra": extra or {},
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def _trt() -> Any:
    return lazy_import("tensorrt", TRT_HINT)


def _gpu_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "no-cuda-device"


def _has_qdq(onnx_path: Path) -> bool:
    onnx = lazy_import("onnx", ONNX_HINT)
    model = onnx.load(str(onnx_path), load_external_data=False)
    return any(
        n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in _iter_nodes(model.graph)
    )


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


class EngineFromOnnx:
    """Lazy loader: build a TensorRT engine from an ONNX file once, cache it, return its path.

    Args:
        onnx_path: the ONNX file (one image input ``(N, C, H, W)``, batch may be symbolic).
        precision: ``fp32`` (TF32 allowed, TensorRT's default), ``fp16``, ``bf16`` or ``int8``.
        opt_level: ``builder_optimization_level`` (0-5; TensorRT's default is 3).
        workspace_bytes: limit of the workspace memory pool; ``None`` keeps TensorRT's default.
        timing_cache_path: builder timing cache file, loaded before and saved after a build.
        cache_dir: folder for ``<key>.engine`` files; a private temporary folder when ``None``.
        batch: batch size of the optimisation profile (min = opt = max unless ``max_batch``).
        max_batch: build a profile ``1 .. max_batch`` with ``opt = batch`` instead.
        calibrator: an ``IInt8Calibrator`` for ``int8`` (not needed for a Q/DQ ONNX).
    """

    def __init__(
        self,
        onnx_path: str | Path,
        precision: str = "fp16",
        opt_level: int = 3,
        workspace_bytes: int | None = None,
        timing_cache_path: str | Path | None = None,
        cache_dir: str | Path | None = None,
        *,
        batch: int = 1,
        max_batch: int | None = None,
        calibrator: Any = None,
    ) -> None:
        if precision not in PRECISIONS:
            raise UsageError(
                f"TensorRT precision must be one of {', '.join(PRECISIONS)}, got '{precision}'"
            )
        if not 0 <= int(opt_level) <= 5:
            raise UsageError(f"opt_level must be in 0..5, got {opt_level}")
        if workspace_bytes is not None and workspace_bytes <= 0:
            raise UsageError(f"workspace_bytes must be positive, got {workspace_bytes}")
        if batch < 1 or (max_batch is not None and max_batch < batch):
            raise UsageError(f"need 1 <= batch <= max_batch, got {batch}, {max_batch}")
        self.onnx_path = Path(onnx_path)
        if not self.onnx_path.is_file():
            raise UsageError(f"ONNX file not found: {self.onnx_path}")
        self.precision = precision
        self.opt_level = int(opt_level)
        self.workspace_bytes = workspace_bytes
        self.timing_cache_path = None if timing_cache_path is None else Path(timing_cache_path)
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if cache_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="kd-trt-")
            cache_dir = self._tmp.name
        self.cache_dir = Path(cache_dir)
        self.batch = batch
        self.max_batch = max_batch
        self.calibrator = calibrator
        if precision == "int8" and calibrator is None and not _has_qdq(self.onnx_path):
            raise UsageError(
                "TensorRT int8 needs a calibrator or an explicitly quantized (Q/DQ) ONNX model",
                hint="pass calibrator=<tensorrt.IInt8Calibrator> or use precision='fp16'",
            )
        self.built = False  # whether the last call built (False: served from the cache)
        self.build_s: float | None = None
        self.key: str | None = None

    def _profile_shapes(self, network: Any) -> dict[str, tuple[tuple[int, ...], ...]]:
        shapes: dict[str, tuple[tuple[int, ...], ...]] = {}
        for i in range(network.num_inputs):
            t = network.get_input(i)
            dims = tuple(int(d) for d in t.shape)
            if any(d < 0 for d in dims[1:]):
                raise ExportError(
                    f"input '{t.name}' has dynamic non-batch dims {dims}; export with static C/H/W"
                )
            lo = self.batch if self.max_batch is None else 1
            hi = self.batch if self.max_batch is None else self.max_batch
            shapes[t.name] = ((lo, *dims[1:]), (self.batch, *dims[1:]), (hi, *dims[1:]))
        return shapes

    def __call__(self) -> Path:
        """Build (or find in the cache) the engine; return the ``.engine`` file path."""
        trt = _trt()
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        # TensorRT 10 networks are always explicit-batch; the old EXPLICIT_BATCH flag is ignored
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(self.onnx_path)):
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            lint = lint_onnx_for_tensorrt(self.onnx_path)
            raise ExportError(
                "TensorRT's ONNX parser rejected the model: " + "; ".join(errors or ["no details"]),
                hint=("lint: " + "; ".join(lint)) if lint else None,
            )
        shapes = self._profile_shapes(network)
        calib_id = None if self.calibrator is None else type(self.calibrator).__qualname__
        self.key = engine_cache_key(
            file_sha256(self.onnx_path),
            trt_version=str(trt.__version__),
            gpu_name=_gpu_name(),
            precision=self.precision,
            opt_level=self.opt_level,
            workspace_bytes=self.workspace_bytes,
            input_shapes=shapes,  # type: ignore[arg-type]
            extra={"calibrator": calib_id} if calib_id else None,
        )
        path = self.cache_dir / f"{self.key[:32]}.engine"
        if path.is_file():
            self.built = False
            return path
        config = builder.create_builder_config()
        if self.workspace_bytes is not None:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(self.workspace_bytes))
        config.builder_optimization_level = self.opt_level
        # DETAILED keeps layer names and parameters for the engine inspector and IProfiler
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
        if self.precision == "fp16":
            config.set_flag(trt.BuilderFlag.FP16)
        elif self.precision == "bf16":
            config.set_flag(trt.BuilderFlag.BF16)
        elif self.precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
            # layers without an int8 kernel fall back to fp16 rather than fp32
            config.set_flag(trt.BuilderFlag.FP16)
            if self.calibrator is not None:
                config.int8_calibrator = self.calibrator
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in shapes.items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
        cache = None
        if self.timing_cache_path is not None:
            blob = self.timing_cache_path.read_bytes() if self.timing_cache_path.is_file() else b""
            cache = config.create_timing_cache(blob)
            # a cache from another device/version is rejected rather than silently mixed in
            config.set_timing_cache(cache, False)
        t0 = time.perf_counter()
        serialized = builder.build_serialized_network(network, config)
        self.build_s = time.perf_counter() - t0
        if serialized is None:
            raise ExportError(
                f"TensorRT failed to build a {self.precision} engine from {self.onnx_path.name}",
                hint="see the TensorRT log above; try a larger workspace_bytes or fp32",
            )
        if cache is not None and self.timing_cache_path is not None:
            _atomic_write(
                self.timing_cache_path, bytes(memoryview(config.get_timing_cache().serialize()))
            )
        _atomic_write(path, bytes(memoryview(serialized)))
        meta = {
            "onnx": str(self.onnx_path),
            "precision": self.precision,
            "opt_level": self.opt_level,
            "workspace_bytes": self.workspace_bytes,
            "trt_version": str(trt.__version__),
            "gpu_name": _gpu_name(),
            "input_shapes": shapes,
            "build_s": self.build_s,
        }
        path.with_suffix(".json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
        self.built = True
        return path

    def close(self) -> None:
        """Remove the private temporary cache folder, if any. Idempotent."""
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> EngineFromOnnx:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------
# Running an engine
# ---------------------------------------------------------------------------------------------


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
        trt = self.trt = _trt()
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
        warmup, min_iters, max_iters, min_time_s, max_time_s, target_cv: see ``time_adaptive``.
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
        warmup: int = 20,
        min_iters: int = 100,
        max_iters: int = 5000,
        min_time_s: float = 1.0,
        max_time_s: float = 60.0,
        target_cv: float = 0.02,
    ) -> None:
        if precision not in PRECISIONS:
            raise UsageError(
                f"TensorRT precision must be one of {', '.join(PRECISIONS)}, got '{precision}'"
            )
        self.precision = precision
        self.opt_level = opt_level
        self.workspace_bytes = workspace_bytes
        self._own_dir = cache_dir is None
        self.cache_dir = (
            Path(tempfile.mkdtemp(prefix="kd-trt-")) if cache_dir is None else Path(cache_dir)
        )
        self.timing_cache_path = (
            self.cache_dir / "timing.cache"
            if timing_cache_path is None
            else Path(timing_cache_path)
        )
        self.layer_profile = layer_profile
        self.layer_runs = layer_runs
        self.calibrator = calibrator
        self.timing_kw: dict[str, Any] = dict(
            warmup=warmup,
            min_iters=min_iters,
            max_iters=max_iters,
            min_time_s=min_time_s,
            max_time_s=max_time_s,
            target_cv=target_cv,
        )

    def _impl(self, model: nn.Module, input_spec: InputSpec) -> Measurement:
        trt = _trt()  # a missing TensorRT is reported before the GPU check
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

        timing: TimingResult = time_adaptive(step, **self.timing_kw)
        layers: tuple[LayerCost, ...] = ()
        if self.layer_profile:
            times = runner.profile_layers(handle, self.layer_runs, stream.synchronize)
            layers = layers_from_trt(runner.layer_info(), times)
        m = measurement_from_timing(
            timing,
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
        if self._own_dir:
            shutil.rmtree(self.cache_dir, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# trtexec
# ---------------------------------------------------------------------------------------------


def build_trtexec_command(
    trtexec: str,
    onnx_path: str | Path,
    *,
    input_name: str,
    input_shape: Sequence[int],
    precision: str = "fp16",
    times_path: str | Path | None = None,
    profile_path: str | Path | None = None,
    layer_info_path: str | Path | None = None,
    warmup_ms: int = 200,
    duration_s: float = 3.0,
    iterations: int | None = None,
    use_cuda_graph: bool = False,
    opt_level: int | None = None,
    workspace_mib: int | None = None,
    timing_cache_path: str | Path | None = None,
    calibration_cache: str | Path | None = None,
) -> list[str]:
    """The ``trtexec`` argument list for one build-and-time run.

    GPU compute is timed without host/device copies (``--noDataTransfers``), like the
    ``tensorrt`` profiler; layer times come from a separate profiled run
    (``--separateProfileRun``) so that profiling does not perturb the end-to-end times.

    Args:
        trtexec: the executable.
        onnx_path: model file.
        input_name: name of the (single) input.
        input_shape: full input shape ``(N, C, H, W)`` (sets a static optimisation profile).
        precision: fp32/fp16/bf16/int8 (int8 needs ``calibration_cache``).
        times_path, profile_path, layer_info_path: JSON exports (``--exportTimes``,
            ``--exportProfile``, ``--exportLayerInfo``).
        warmup_ms: ``--warmUp`` milliseconds.
        duration_s: ``--duration`` seconds (minimum timed duration).
        iterations: ``--iterations`` (minimum timed iterations).
        use_cuda_graph: ``--useCudaGraph``.
        opt_level: ``--builderOptimizationLevel``.
        workspace_mib: ``--memPoolSize=workspace:<N>MiB``.
        timing_cache_path: ``--timingCacheFile``.
        calibration_cache: ``--calib`` for int8.

    Returns:
        argv list for ``subprocess.run``.
    """
    if precision not in PRECISIONS:
        raise UsageError(
            f"trtexec precision must be one of {', '.join(PRECISIONS)}, got '{precision}'"
        )
    if precision == "int8" and calibration_cache is None:
        raise UsageError(
            "trtexec int8 needs a calibration cache (uncalibrated int8 gives meaningless accuracy)",
            hint="pass calibration_cache=<file> or use precision='fp16'",
        )
    shape = "x".join(str(int(d)) for d in input_shape)
    cmd = [trtexec, f"--onnx={onnx_path}", f"--shapes={input_name}:{shape}"]
    if precision == "fp16":
        cmd.append("--fp16")
    elif precision == "bf16":
        cmd.append("--bf16")
    elif precision == "int8":
        cmd += ["--int8", "--fp16", f"--calib={calibration_cache}"]
    if opt_level is not None:
        cmd.append(f"--builderOptimizationLevel={int(opt_level)}")
    if workspace_mib is not None:
        cmd.append(f"--memPoolSize=workspace:{int(workspace_mib)}MiB")
    if timing_cache_path is not None:
        cmd.append(f"--timingCacheFile={timing_cache_path}")
    cmd += [f"--warmUp={int(warmup_ms)}", f"--duration={duration_s:g}"]
    if iterations is not None:
        cmd.append(f"--iterations={int(iterations)}")
    cmd += ["--noDataTransfers", "--useSpinWait"]
    if use_cuda_graph:
        cmd.append("--useCudaGraph")
    if times_path is not None:
        cmd.append(f"--exportTimes={times_path}")
    if profile_path is not None or layer_info_path is not None:
        cmd += ["--profilingVerbosity=detailed", "--separateProfileRun"]
    if profile_path is not None:
        cmd.append(f"--exportProfile={profile_path}")
    if layer_info_path is not None:
        cmd.append(f"--exportLayerInfo={layer_info_path}")
    return cmd


def _load_json(data: str | Path | Any) -> Any:
    if isinstance(data, Path) or (
        isinstance(data, str) and not data.lstrip().startswith(("[", "{"))
    ):
        return json.loads(Path(data).read_text(encoding="utf-8"))
    if isinstance(data, str):
        return json.loads(data)
    return data


def parse_trtexec_times(data: str | Path | list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Per-iteration times from a ``--exportTimes`` file.

    The file is a JSON list with one object per timed inference, with keys ``startEnqMs``,
    ``endEnqMs``, ``startH2dMs``, ``endH2dMs``, ``startComputeMs``, ``endComputeMs``,
    ``startD2hMs``, ``endD2hMs``, ``h2dMs``, ``computeMs``, ``d2hMs``, ``latencyMs`` (all ms).

    Args:
        data: path, JSON text, or the parsed list.

    Returns:
        ``{"compute_ms": ..., "latency_ms": ..., "enqueue_ms": ...}`` arrays, one value per
        iteration (``enqueue_ms`` empty where the keys are absent).
    """
    rows = _load_json(data)
    if not isinstance(rows, list) or not rows:
        raise ExportError("trtexec times export is not a non-empty JSON list")
    compute, latency, enqueue = [], [], []
    for r in rows:
        if not isinstance(r, dict):
            raise ExportError(f"trtexec times entry is not an object: {r!r}")
        if "computeMs" in r:
            compute.append(float(r["computeMs"]))
        elif "startComputeMs" in r and "endComputeMs" in r:
            compute.append(float(r["endComputeMs"]) - float(r["startComputeMs"]))
        else:
            raise ExportError("trtexec times entry has no computeMs/startComputeMs/endComputeMs")
        latency.append(float(r.get("latencyMs", compute[-1])))
        if "startEnqMs" in r and "endEnqMs" in r:
            enqueue.append(float(r["endEnqMs"]) - float(r["startEnqMs"]))
    return {
        "compute_ms": np.asarray(compute),
        "latency_ms": np.asarray(latency),
        "enqueue_ms": np.asarray(enqueue),
    }


def parse_trtexec_profile(
    data: str | Path | list[Any], layer_types: dict[str, str] | None = None
) -> tuple[int, tuple[LayerCost, ...]]:
    """Per-layer times from a ``--exportProfile`` file.

    The file is a JSON list: first ``{"count": N}`` (profiled iterations), then one object
    per layer with ``name``, ``timeMs`` (total), ``averageMs``, ``medianMs`` (newer versions)
    and ``percentage``.

    Args:
        data: path, JSON text, or the parsed list.
        layer_types: optional layer name -> type map (from ``parse_trtexec_layer_info``).

    Returns:
        ``(count, layers)`` with ``LayerCost.latency_ms`` the per-iteration average.
    """
    rows = _load_json(data)
    if (
        not isinstance(rows, list)
        or not rows
        or not isinstance(rows[0], dict)
        or "count" not in rows[0]
    ):
        raise ExportError('trtexec profile export must be a JSON list starting with {"count": N}')
    count = int(rows[0]["count"])
    types = layer_types or {}
    layers = []
    for r in rows[1:]:
        if not isinstance(r, dict) or "name" not in r:
            raise ExportError(f"trtexec profile entry without a name: {r!r}")
        if "averageMs" in r:
            avg = float(r["averageMs"])
        elif "timeMs" in r and count:
            avg = float(r["timeMs"]) / count
        else:
            raise ExportError(f"trtexec profile entry '{r['name']}' has no averageMs/timeMs")
        layers.append(
            LayerCost(name=str(r["name"]), op=types.get(str(r["name"]), ""), latency_ms=avg)
        )
    return count, tuple(layers)


def parse_trtexec_layer_info(data: str | Path | dict[str, Any]) -> dict[str, str]:
    """Layer name -> LayerType from a ``--exportLayerInfo`` file (engine inspector JSON)."""
    doc = _load_json(data)
    layers = doc.get("Layers", []) if isinstance(doc, dict) else []
    return {
        str(d.get("Name", "")): str(d.get("LayerType", "")) for d in layers if isinstance(d, dict)
    }


_DEVICE_RE = re.compile(r"Selected Device:\s*(.+)")
_VERSION_RE = re.compile(r"TensorRT version:\s*([0-9.]+)")


@register_profiler("trtexec")
class TrtexecProfiler(Profiler):
    """Measured TensorRT latency via the ``trtexec`` command-line tool.

    Args:
        precision: fp32/fp16/bf16/int8 (int8 needs ``calibration_cache``).
        trtexec: path of the executable; found on PATH when ``None``.
        warmup_ms, duration_s, iterations, use_cuda_graph, opt_level, workspace_mib,
            calibration_cache: see ``build_trtexec_command``.
        cache_dir: ONNX/export folder (private temporary folder when ``None``).
        timeout_s: limit for one trtexec run (it builds the engine too).
    """

    name = "trtexec"

    def __init__(
        self,
        precision: str = "fp16",
        trtexec: str | None = None,
        warmup_ms: int = 200,
        duration_s: float = 3.0,
        iterations: int | None = None,
        use_cuda_graph: bool = False,
        opt_level: int | None = None,
        workspace_mib: int | None = None,
        calibration_cache: str | Path | None = None,
        cache_dir: str | Path | None = None,
        timeout_s: float = 1800.0,
    ) -> None:
        if precision not in PRECISIONS:
            raise UsageError(
                f"trtexec precision must be one of {', '.join(PRECISIONS)}, got '{precision}'"
            )
        self.precision = precision
        self.trtexec = trtexec
        self.kw: dict[str, Any] = dict(
            warmup_ms=warmup_ms,
            duration_s=duration_s,
            iterations=iterations,
            use_cuda_graph=use_cuda_graph,
            opt_level=opt_level,
            workspace_mib=workspace_mib,
            calibration_cache=calibration_cache,
        )
        self._own_dir = cache_dir is None
        self.cache_dir = (
            Path(tempfile.mkdtemp(prefix="kd-trtexec-")) if cache_dir is None else Path(cache_dir)
        )
        self.timeout_s = timeout_s

    def _exe(self) -> str:
        exe = self.trtexec or shutil.which("trtexec")
        if not exe or not Path(exe).exists():
            raise BackendUnavailableError("trtexec was not found on PATH", hint=TRTEXEC_HINT)
        return exe

    def _impl(self, model: nn.Module, input_spec: InputSpec) -> Measurement:
        exe = self._exe()
        loader = OnnxFromModule(model, input_spec, cache_dir=self.cache_dir / "onnx")
        onnx_path = loader()
        assert loader.info is not None
        run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=self.cache_dir))
        times, prof, info = (
            run_dir / "times.json",
            run_dir / "profile.json",
            run_dir / "layers.json",
        )
        cmd = build_trtexec_command(
            exe,
            onnx_path,
            input_name=loader.info.input_name,
            input_shape=(input_spec.batch, *input_spec.shape),
            precision=self.precision,
            times_path=times,
            profile_path=prof,
            layer_info_path=info,
            timing_cache_path=self.cache_dir / "timing.cache",
            **self.kw,
        )
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=self.timeout_s, check=False
            )
        except subprocess.TimeoutExpired:
            raise ExportError(f"trtexec did not finish within {self.timeout_s:g} s") from None
        log = proc.stdout + proc.stderr
        if proc.returncode != 0:
            tail = " | ".join(log.strip().splitlines()[-5:])
            raise ExportError(f"trtexec failed (exit {proc.returncode}): {tail}")
        # the device must be a real GPU: take torch's view when it has one, else trtexec's
        dev_match = _DEVICE_RE.search(log)
        if torch.cuda.is_available():
            device = cuda_device()
        elif dev_match:
            device = f"cuda:{dev_match.group(1).strip()}"
        else:
            raise BackendUnavailableError(
                "trtexec ran but reported no GPU ('Selected Device' missing) and torch sees none; "
                "refusing to report a measured latency",
                hint=TRTEXEC_HINT,
            )
        t = parse_trtexec_times(times)
        types = parse_trtexec_layer_info(info) if info.is_file() else {}
        layers: tuple[LayerCost, ...] = ()
        if prof.is_file():
            _, layers = parse_trtexec_profile(prof, types)
        samples = t["compute_ms"]
        s = latency_stats(samples)
        timing = TimingResult(
            tuple(float(v) for v in samples), "trtexec", float(self.kw["duration_s"]), 0, s
        )
        ver = _VERSION_RE.search(log)
        m = measurement_from_timing(
            timing,
            device=device,
            runtime="tensorrt",
            precision=self.precision,
            batch=input_spec.batch,
            threads=None,
            extra={
                "tool": "trtexec",
                "command": cmd,
                "trt_version": ver.group(1) if ver else None,
                "latency_p50_ms_incl_transfers": float(np.median(t["latency_ms"])),
                "onnx_sha256": loader.info.sha256,
                "timer": "trtexec --exportTimes computeMs",
            },
        )
        shutil.rmtree(run_dir, ignore_errors=True)
        return dataclasses.replace(m, layers=layers)

    def close(self) -> None:
        if self._own_dir:
            shutil.rmtree(self.cache_dir, ignore_errors=True)


__all__ = [
    "TRT_OPSET_RANGE",
    "TRT_OPS_SOURCE",
    "TRT_SUPPORTED_OPS",
    "TRT_UNSUPPORTED_OPS",
    "EngineFromOnnx",
    "TensorRTProfiler",
    "TrtRunner",
    "TrtexecProfiler",
    "build_trtexec_command",
    "engine_cache_key",
    "layers_from_trt",
    "lint_onnx_for_tensorrt",
    "make_layer_profiler",
    "parse_trtexec_layer_info",
    "parse_trtexec_profile",
    "parse_trtexec_times",
    "require_cuda",
]
