"""TensorRT engines from ONNX: the lazy ``tensorrt`` import, engine cache keys, cached builds.

Written against the documented TensorRT 10 and 11 Python APIs (docs.nvidia.com/deeplearning/tensorrt,
Python API reference: ``Builder``, ``IBuilderConfig``, ``OnnxParser``, ``ITimingCache``; on TensorRT
11, whose networks are strongly typed, fp16/bf16 builds parse a converted copy of the ONNX:
:mod:`.precision`).
``tensorrt`` is imported lazily (``load_tensorrt()``); without it this module still imports.

``EngineFromOnnx`` is a Polygraphy-style lazy loader that builds a serialized engine once and
caches it under ``engine_cache_key``: sha256(ONNX), TensorRT version, GPU name and every build
flag. The builder's timing cache is loaded and saved when a path is given. Files are written
atomically (``atomic_write``). INT8 needs a calibrator or an explicitly quantized (Q/DQ) ONNX,
otherwise it is refused before any build starts.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import torch

from ...errors import ExportError, UsageError
from ..base import lazy_import
from ..onnx_export import file_sha256
from ..workdir import WorkDir
from .lint import lint_onnx_for_tensorrt
from .precision import QDQ_HINT, has_qdq, strongly_typed_onnx, weakly_typed

TRT_HINT = "pip install kd-compile[tensorrt] on a machine with NVIDIA's TensorRT 10 or 11"
PRECISIONS = ("fp32", "fp16", "bf16", "int8")


def load_tensorrt() -> Any:
    """The ``tensorrt`` module, imported on first use (BackendUnavailableError without it)."""
    return lazy_import("tensorrt", TRT_HINT)


def check_precision(precision: str, what: str = "TensorRT") -> None:
    """Raise UsageError unless ``precision`` is one of ``PRECISIONS``."""
    if precision not in PRECISIONS:
        raise UsageError(f"{what} precision must be one of {', '.join(PRECISIONS)}, got '{precision}'")


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


def _gpu_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "no-cuda-device"


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary sibling and a rename: never a half file."""
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
        check_precision(precision)
        if not 0 <= int(opt_level) <= 5:
            raise UsageError(f"opt_level must be in 0..5, got {opt_level}")
        if workspace_bytes is not None and workspace_bytes <= 0:
            raise UsageError(f"workspace_bytes must be positive, got {workspace_bytes}")
        if batch < 1 or (max_batch is not None and max_batch < batch):
            raise UsageError(f"need 1 <= batch <= max_batch, got {batch}, {max_batch}")
        self.onnx_path = Path(onnx_path)
        if not self.onnx_path.is_file():
            raise UsageError(f"ONNX file not found: {self.onnx_path}")
        if precision == "int8" and calibrator is None and not has_qdq(self.onnx_path):
            raise UsageError(
                "TensorRT int8 needs a calibrator or an explicitly quantized (Q/DQ) ONNX model",
                hint="pass calibrator=<tensorrt.IInt8Calibrator> or use precision='fp16'",
            )
        self.precision = precision
        self.opt_level = int(opt_level)
        self.workspace_bytes = workspace_bytes
        self.timing_cache_path = None if timing_cache_path is None else Path(timing_cache_path)
        self._dir = WorkDir(cache_dir, "kd-trt-")
        self.cache_dir = self._dir.path
        self.batch = batch
        self.max_batch = max_batch
        self.calibrator = calibrator
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
        trt = load_tensorrt()
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        # TensorRT 10 networks are always explicit-batch; the old EXPLICIT_BATCH flag is ignored
        # (TensorRT 11 networks are always strongly typed: precision comes from the ONNX's types)
        network = builder.create_network(0)
        weak = weakly_typed(trt)
        converter = ""
        onnx_path = self.onnx_path
        if not weak:
            if self.calibrator is not None:
                raise UsageError(f"TensorRT {trt.__version__} has no int8 calibrators", hint=QDQ_HINT)
            onnx_path, converter = strongly_typed_onnx(self.onnx_path, self.precision, self.cache_dir / "onnx")
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            lint = lint_onnx_for_tensorrt(onnx_path)
            raise ExportError(
                "TensorRT's ONNX parser rejected the model: " + "; ".join(errors or ["no details"]),
                hint=("lint: " + "; ".join(lint)) if lint else None,
            )
        shapes = self._profile_shapes(network)
        extra: dict[str, str] = {}
        if self.calibrator is not None:
            extra["calibrator"] = type(self.calibrator).__qualname__
        if not weak:
            extra["strongly_typed"] = converter or "as exported"
        self.key = engine_cache_key(
            file_sha256(self.onnx_path),
            trt_version=str(trt.__version__),
            gpu_name=_gpu_name(),
            precision=self.precision,
            opt_level=self.opt_level,
            workspace_bytes=self.workspace_bytes,
            input_shapes=shapes,  # type: ignore[arg-type]
            extra=extra or None,
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
        # TensorRT 10: precision flags let the builder pick lower-precision kernels; TensorRT 11
        # removed them (and calibrators): the precision is in the parsed graph's types
        if weak and self.precision in ("fp16", "int8"):
            # int8: layers without an int8 kernel fall back to fp16 rather than fp32
            config.set_flag(trt.BuilderFlag.FP16)
        if weak and self.precision == "bf16":
            config.set_flag(trt.BuilderFlag.BF16)
        if weak and self.precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
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
            atomic_write(
                self.timing_cache_path, bytes(memoryview(config.get_timing_cache().serialize()))
            )
        atomic_write(path, bytes(memoryview(serialized)))
        meta = {
            "onnx": str(self.onnx_path),
            "onnx_built": str(onnx_path),
            "precision": self.precision,
            "strongly_typed": extra.get("strongly_typed"),
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
        self._dir.close()

    def __enter__(self) -> EngineFromOnnx:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = [
    "PRECISIONS",
    "TRT_HINT",
    "EngineFromOnnx",
    "atomic_write",
    "check_precision",
    "engine_cache_key",
    "load_tensorrt",
]
