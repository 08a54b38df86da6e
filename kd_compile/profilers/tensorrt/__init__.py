"""TensorRT 10/11 backend: ONNX lint, cached engine builds, and two measured profilers.

Written against the documented TensorRT 10 and 11 Python APIs; ``tensorrt`` is imported lazily, so
this package (and the lint) imports without it. One job per module:

* :mod:`.lint`: ``lint_onnx_for_tensorrt`` and the onnx-tensorrt operator tables it uses.
* :mod:`.engine`: ``EngineFromOnnx`` (cached engine builds), ``engine_cache_key``, the lazy
  ``tensorrt`` import.
* :mod:`.precision`: where a build's precision lives, builder flags (TensorRT 10) or the ONNX's
  types (TensorRT 11, strongly typed): ``weakly_typed``, ``strongly_typed_onnx``.
* :mod:`.runner`: ``TrtRunner``, per-layer times, ``TensorRTProfiler`` (``"tensorrt"``).
* :mod:`.trtexec`: the ``trtexec`` command line and JSON exports, ``TrtexecProfiler``
  (``"trtexec"``).
"""

from __future__ import annotations

from .engine import PRECISIONS, TRT_HINT, EngineFromOnnx, engine_cache_key, load_tensorrt
from .lint import TRT_OPS_SOURCE, TRT_OPSET_RANGE, TRT_SUPPORTED_OPS, TRT_UNSUPPORTED_OPS, lint_onnx_for_tensorrt
from .runner import TensorRTProfiler, TrtRunner, layers_from_trt, make_layer_profiler, require_cuda
from .trtexec import (
    TRTEXEC_HINT,
    TrtexecProfiler,
    build_trtexec_command,
    parse_trtexec_layer_info,
    parse_trtexec_profile,
    parse_trtexec_times,
)

__all__ = [
    "PRECISIONS",
    "TRTEXEC_HINT",
    "TRT_HINT",
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
    "load_tensorrt",
    "make_layer_profiler",
    "parse_trtexec_layer_info",
    "parse_trtexec_profile",
    "parse_trtexec_times",
    "require_cuda",
]
