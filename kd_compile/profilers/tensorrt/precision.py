"""Where a TensorRT build's precision lives: builder flags (TensorRT 10) or the ONNX graph (11).

TensorRT 10 networks are weakly typed: ``BuilderFlag.FP16`` / ``BF16`` / ``INT8`` (trtexec
``--fp16`` / ``--bf16`` / ``--int8``) let the builder choose lower-precision kernels. TensorRT 11
removed every one of those flags, the int8 calibrators (``IBuilderConfig.int8_calibrator``,
``IInt8Calibrator``, trtexec ``--calib``) and ``--best``: every network is strongly typed, so the
tensor types of the ONNX graph are the engine's precision (docs.nvidia.com/deeplearning/tensorrt,
"Migrating from TensorRT 10.x to 11.x": weak typing removed; "Removed Python APIs and
Replacements"; "Migrating trtexec Usage from TensorRT 10.x to 11.x"). What the documentation
prescribes instead, done here:

* fp16 / bf16: convert the fp32 ONNX to mixed precision before the build, keeping the model's
  inputs and outputs in fp32 (so runners feed the same buffers). NVIDIA ModelOpt's AutoCast
  (``modelopt.onnx.autocast.convert_to_mixed_precision``) when it is installed, else (fp16 only)
  ONNX Runtime's ``float16`` converter, as the CUDA provider's fp16 runs use it (``onnxrt.to_fp16``);
* int8: only from an explicitly quantized ONNX (QuantizeLinear/DequantizeLinear nodes);
  calibrators are refused;
* fp32: the ONNX as it is.

``weakly_typed(trt)`` tells the two apart by feature (``BuilderFlag.FP16`` exists), not by
version string, and ``trtexec_weakly_typed(help_text)`` does the same for a ``trtexec``
(its ``--help`` lists ``--fp16``).
"""

from __future__ import annotations

import hashlib
import importlib
from pathlib import Path
from typing import Any

from ...errors import BackendUnavailableError, UsageError
from ..base import lazy_import
from ..onnx_export import ONNX_HINT, file_sha256, save_onnx
from .lint import iter_nodes

CONVERT_HINT = (
    "TensorRT 11 builds fp16/bf16 only from a mixed-precision ONNX: pip install nvidia-modelopt[onnx] "
    "(fp16 and bf16, NVIDIA's AutoCast); fp16 also converts with onnxruntime"
)
QDQ_HINT = (
    "TensorRT 11 removed int8 calibration: quantize the model to a Q/DQ ONNX first "
    "(NVIDIA ModelOpt, or onnxruntime.quantization), or use precision='fp16'"
)


def weakly_typed(trt: Any) -> bool:
    """Whether this ``tensorrt`` module still takes precision builder flags (TensorRT 10)."""
    return hasattr(trt.BuilderFlag, "FP16")


def trtexec_weakly_typed(help_text: str) -> bool:
    """Whether a ``trtexec`` whose ``--help`` printed ``help_text`` takes ``--fp16`` (TensorRT 10)."""
    return "--fp16" in help_text


def has_qdq(onnx_path: Path) -> bool:
    """Whether the ONNX model is explicitly quantized (has QuantizeLinear/DequantizeLinear nodes)."""
    onnx = lazy_import("onnx", ONNX_HINT)
    model = onnx.load(str(onnx_path), load_external_data=False)
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in iter_nodes(model.graph))


def _autocast(onnx_path: Path, precision: str, out: Path) -> None:
    from modelopt.onnx.autocast import convert_to_mixed_precision  # type: ignore[import-not-found]

    save_onnx(convert_to_mixed_precision(onnx_path=str(onnx_path), low_precision_type=precision,
                                         keep_io_types=True), out)


def _onnxruntime_fp16(onnx_path: Path, precision: str, out: Path) -> None:
    from ..onnxrt import to_fp16

    to_fp16(onnx_path, out)


# (module that must import, package whose name and ``__version__`` name the conversion, precisions,
# conversion writing its output file), preferred first
_CONVERTERS = (
    ("modelopt.onnx.autocast", "modelopt", ("fp16", "bf16"), _autocast),
    ("onnxruntime.transformers.float16", "onnxruntime", ("fp16",), _onnxruntime_fp16),
)


def _converter(precision: str) -> tuple[str, Any] | None:
    """(name and version, conversion) of the first installed converter to ``precision``."""
    for module, package, precisions, convert in _CONVERTERS:
        if precision not in precisions:
            continue
        try:
            importlib.import_module(module)
        except Exception:  # noqa: BLE001 - not installed, or a broken install: try the next one
            continue
        return f"{package} {getattr(importlib.import_module(package), '__version__', 'unknown')}", convert
    return None


def strongly_typed_onnx(onnx_path: Path, precision: str, out_dir: Path) -> tuple[Path, str]:
    """The ONNX a strongly typed (TensorRT 11) build of ``precision`` parses, and how it was made.

    Args:
        onnx_path: the fp32 ONNX model (or a Q/DQ one for int8).
        precision: fp32/fp16/bf16/int8.
        out_dir: where a converted copy is written (named by the model's digest, precision and
            converter; reused when it is there).

    Returns:
        (path, converter): ``onnx_path`` itself and ``""`` for fp32 and Q/DQ int8; otherwise the
        converted copy and the converter's name and version (part of the engine cache key).

    Raises:
        UsageError: int8 without Q/DQ nodes.
        BackendUnavailableError: fp16/bf16 with no converter installed (bf16 needs ModelOpt).
    """
    if precision == "fp32":
        return onnx_path, ""
    if precision == "int8":
        if not has_qdq(onnx_path):
            raise UsageError("TensorRT 11 builds int8 only from an explicitly quantized (Q/DQ) ONNX model",
                             hint=QDQ_HINT)
        return onnx_path, ""
    found = _converter(precision)
    if found is None:
        raise BackendUnavailableError(f"no ONNX converter to {precision} is installed", hint=CONVERT_HINT)
    converter, convert = found
    tag = hashlib.sha256(f"{file_sha256(onnx_path)} {precision} {converter}".encode()).hexdigest()[:16]
    out = Path(out_dir) / f"{tag}-{precision}.onnx"
    if not out.is_file():
        convert(onnx_path, precision, out)
    return out, converter


__all__ = ["CONVERT_HINT", "QDQ_HINT", "has_qdq", "strongly_typed_onnx", "trtexec_weakly_typed", "weakly_typed"]
