"""ONNX export of a PyTorch vision model, simplified and checked against PyTorch.

``export_onnx`` is the one place the project turns an ``nn.Module`` into an ``.onnx`` file:

1. ``torch.onnx.export`` with the TorchScript-based exporter (``dynamo=False``). In torch 2.15
   the default is the ``torch.export``-based exporter (``dynamo=True``), which needs the
   ``onnxscript`` package; that package is not a dependency of kd-compile and is not installed
   in the reference environment, where ``dynamo=True`` fails with ``ModuleNotFoundError``. The
   TorchScript exporter handles the small CNNs and timm ViT blocks this project exports (both
   checked in ``tests/profilers/test_onnx_export.py``), so it is the default. ``exporter="dynamo"``
   selects the new exporter where ``onnxscript`` is installed.
2. ``onnxsim.simplify`` (constant folding, shape inference, fusions); a failure of the
   simplifier is not fatal: the unsimplified model is kept and a warning says why.
3. A numerical check: ONNX Runtime (CPU) runs the file on a seeded random input and its
   outputs are compared with PyTorch's; a difference beyond ``atol + rtol * max|torch|`` (the
   output's largest magnitude: fp32 rounding is relative to the values a network computes with, and
   a random-weight MobileOne whose outputs reach 1e15 differs from ONNX Runtime by 4e-7 of that,
   far more than 1e-3 of its smallest outputs) raises ``ExportError`` with the largest absolute
   difference. With a dynamic batch axis the check
   runs at a second batch size too, because a traced ``Reshape`` can silently bake the batch
   size into the graph.

``OnnxFromModule`` is the Polygraphy-style lazy loader: ``OnnxFromModule(model, spec)()``
exports once and returns the path; calling it again returns the cached file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ..errors import ExportError, UsageError
from .base import InputSpec, lazy_import
from .workdir import WorkDir

ORT_HINT = "pip install onnxruntime"
ONNX_HINT = "pip install onnx onnxsim"

INPUT_NAME = "input"
OUTPUT_NAME = "output"


@dataclass(frozen=True)
class OnnxExportInfo:
    """What ``export_onnx`` produced.

    Attributes:
        path: the written ``.onnx`` file.
        opset: the default-domain opset of the file.
        simplified: whether onnxsim simplified the graph (False when it failed or was off).
        max_abs_diff: largest |ONNX Runtime - PyTorch| over all outputs and checked batch
            sizes; ``None`` when ``check=False``.
        sha256: hex digest of the file bytes (the identity used by engine caches).
        input_name: name of the graph input (``"input"``).
        output_name: name of the first graph output (``"output"``).
    """

    path: Path
    opset: int
    simplified: bool
    max_abs_diff: float | None
    sha256: str
    input_name: str
    output_name: str

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


def save_onnx(model: Any, path: str | Path) -> Path:
    """Write the ONNX ``model`` (a ``ModelProto``) to ``path`` through a temporary sibling and a
    rename, so a reader (a cache lookup, a concurrent run) never sees a half-written file."""
    onnx = lazy_import("onnx", ONNX_HINT)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        onnx.save(model, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def module_fingerprint(model: nn.Module, input_spec: InputSpec, *extra: object) -> str:
    """A sha256 over a model's structure, weights and buffers, the input spec and ``extra``.

    Two calls give the same value exactly when the exported ONNX would be the same: same
    module tree (``repr``), same parameter/buffer names, dtypes, shapes and bytes.

    Args:
        model: the module.
        input_spec: the input it is exported for.
        *extra: anything else that changes the artefact (opset, flags), hashed via ``repr``.

    Returns:
        Hex digest.
    """
    h = hashlib.sha256()
    h.update(type(model).__qualname__.encode())
    h.update(repr(model).encode())
    h.update(repr(sorted(input_spec.to_dict().items())).encode())
    h.update(repr(extra).encode())
    for name, t in model.state_dict().items():
        h.update(name.encode())
        if not isinstance(t, torch.Tensor):
            h.update(repr(t).encode())
            continue
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        # bytes of the CPU copy; .contiguous() because views may not own contiguous storage
        h.update(
            t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
            if t.numel()
            else b""
        )
    return h.hexdigest()


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode for the block and restore each submodule's flag after."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes.items():
            m.training = mode


def _flatten_outputs(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _flatten_outputs(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _flatten_outputs(o)]
    raise ExportError(f"model output of type {type(out).__name__} is not a tensor, tuple or dict")


def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _torch_export(
    model: nn.Module,
    x: torch.Tensor,
    path: Path,
    opset: int,
    output_names: list[str],
    dynamic_batch: bool,
    exporter: str,
) -> None:
    dynamic_axes = None
    if dynamic_batch:
        dynamic_axes = {INPUT_NAME: {0: "batch"}, **{n: {0: "batch"} for n in output_names}}
    with warnings.catch_warnings():
        # the TorchScript exporter warns that it is deprecated on every call and tracer
        # warnings flag Python-side shape arithmetic; the numerical check below is what
        # tells us whether the trace is right, so these warnings are noise here
        warnings.simplefilter("ignore")
        if exporter == "torchscript":
            torch.onnx.export(
                model,
                (x,),
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=output_names,
                dynamic_axes=dynamic_axes,
                do_constant_folding=True,
            )
        elif exporter == "dynamo":
            dynamic_shapes = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
            prog = torch.onnx.export(
                model,
                (x,),
                dynamo=True,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=output_names,
                dynamic_shapes=dynamic_shapes,
            )
            prog.save(str(path))
        else:
            raise UsageError(f"exporter must be 'torchscript' or 'dynamo', got '{exporter}'")


def _simplify(path: Path) -> bool:
    """Simplify ``path`` in place with onnxsim; return whether it worked."""
    onnx = lazy_import("onnx", ONNX_HINT)
    try:
        onnxsim = lazy_import("onnxsim", ONNX_HINT)
        model = onnx.load(str(path))
        simplified, ok = onnxsim.simplify(model)
        if not ok:
            raise RuntimeError("onnxsim's own check of the simplified model failed")
        onnx.save(simplified, str(path))
        return True
    except Exception as exc:  # the simplifier is an optimisation: keep the plain export
        warnings.warn(
            f"kd-compile: ONNX simplification failed, keeping the unsimplified model "
            f"({type(exc).__name__}: {exc})",
            stacklevel=3,
        )
        return False


def _ort_session(path: Path) -> Any:
    ort = lazy_import("onnxruntime", ORT_HINT)
    so = ort.SessionOptions()
    # fatal only: ORT warns about unused initialisers, etc., and its errors reach us as exceptions
    so.log_severity_level = 4
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _check(
    model: nn.Module,
    path: Path,
    input_spec: InputSpec,
    batches: list[int],
    rtol: float,
    atol: float,
) -> float:
    sess = _ort_session(path)
    device = _model_device(model)
    worst = 0.0
    for batch in batches:
        x = input_spec.with_batch(batch).example("cpu")
        with torch.inference_mode():
            ref = [t.detach().float().cpu().numpy() for t in _flatten_outputs(model(x.to(device)))]
        try:
            got = sess.run(None, {INPUT_NAME: x.numpy()})
        except Exception as exc:
            raise ExportError(
                f"ONNX Runtime cannot run the exported model at batch {batch}: {exc}",
                hint="export with dynamic_batch=False if the model is batch-specific",
            ) from None
        if len(got) != len(ref):
            raise ExportError(f"ONNX model has {len(got)} outputs, PyTorch {len(ref)}")
        for i, (g, r) in enumerate(zip(got, ref)):
            if g.shape != r.shape:
                raise ExportError(
                    f"output {i} shape differs at batch {batch}: ONNX {g.shape}, torch {r.shape}",
                    hint="export with dynamic_batch=False if the model is batch-specific",
                )
            diff = np.abs(g.astype(np.float64) - r.astype(np.float64))
            max_diff = float(diff.max()) if diff.size else 0.0
            if not np.isfinite(max_diff):
                raise ExportError(f"output {i} has non-finite values at batch {batch}")
            worst = max(worst, max_diff)
            # fp32 rounding is relative to the magnitudes the network computes with, not to each
            # output element: an output's small elements get the tolerance of its largest one
            scale = float(np.abs(r).max()) if r.size else 0.0
            if max_diff > atol + rtol * scale:
                raise ExportError(
                    f"ONNX Runtime output {i} differs from PyTorch at batch {batch}: "
                    f"max |diff| = {max_diff:.3g} against its largest |value| {scale:.3g} "
                    f"(rtol={rtol:g}, atol={atol:g})"
                )
    return worst


def export_onnx(
    model: nn.Module,
    input_spec: InputSpec,
    path: str | Path,
    *,
    opset: int = 17,
    simplify: bool = True,
    check: bool = True,
    dynamic_batch: bool = True,
    rtol: float = 1e-3,
    atol: float = 1e-4,
    exporter: str = "torchscript",
) -> OnnxExportInfo:
    """Export ``model`` to ONNX, simplify it, and check it against PyTorch.

    The model runs in eval mode during export and check; each submodule's training flag is
    restored afterwards. Weights are exported in their own dtype; the graph input is
    ``input`` with shape ``(batch, C, H, W)`` (``batch`` symbolic when ``dynamic_batch``).

    Args:
        model: the module to export.
        input_spec: input shape ``(C, H, W)`` and batch size used for tracing and checking.
        path: output ``.onnx`` file; parent folders are created.
        opset: ONNX default-domain opset.
        simplify: run onnxsim (a failure warns and keeps the plain export).
        check: compare ONNX Runtime against PyTorch on a seeded random input.
        dynamic_batch: make axis 0 of input and outputs symbolic.
        rtol: relative tolerance of the check, of each output's largest magnitude.
        atol: absolute tolerance of the check.
        exporter: ``"torchscript"`` (default, see module docstring) or ``"dynamo"``.

    Returns:
        OnnxExportInfo describing the file.

    Raises:
        UsageError: ``model``/``input_spec`` of the wrong type.
        ExportError: the exporter failed or the check found a mismatch.
    """
    if not isinstance(model, nn.Module):
        raise UsageError(f"export_onnx needs an nn.Module, got {type(model).__name__}")
    if not isinstance(input_spec, InputSpec):
        raise UsageError("input_spec must be an InputSpec")
    onnx = lazy_import("onnx", ONNX_HINT)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    device = _model_device(model)
    x = input_spec.example(device)
    with _eval_mode(model):
        with torch.inference_mode():
            n_out = len(_flatten_outputs(model(x)))
        output_names = [OUTPUT_NAME] + [f"{OUTPUT_NAME}_{i}" for i in range(1, n_out)]
        try:
            _torch_export(model, x, path, opset, output_names, dynamic_batch, exporter)
        except (ExportError, UsageError):
            raise
        except Exception as exc:
            raise ExportError(f"torch.onnx.export failed: {type(exc).__name__}: {exc}") from None
        try:
            onnx.checker.check_model(str(path))
        except Exception as exc:
            raise ExportError(f"exported ONNX model is invalid: {exc}") from None
        simplified = _simplify(path) if simplify else False
        max_diff: float | None = None
        if check:
            batches = [input_spec.batch]
            if dynamic_batch:
                batches.append(input_spec.batch + 1)
            max_diff = _check(model, path, input_spec, batches, rtol, atol)
    proto = onnx.load(str(path), load_external_data=False)
    opset_found = next(
        (o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), opset
    )
    return OnnxExportInfo(
        path=path,
        opset=int(opset_found),
        simplified=simplified,
        max_abs_diff=max_diff,
        sha256=file_sha256(path),
        input_name=proto.graph.input[0].name,
        output_name=proto.graph.output[0].name,
    )


class OnnxFromModule:
    """Lazy loader: ``OnnxFromModule(model, spec)()`` exports once and returns the path.

    The file name is the model fingerprint (structure + weights + spec + export options), so
    the same model exported twice, even by two loader objects sharing ``cache_dir``, is
    written once. Changing the weights gives a new file.

    Args:
        model: the module to export. It is not copied: weights are read at call time.
        input_spec: the input the model is exported for.
        cache_dir: folder for the files; a private temporary folder when ``None`` (removed
            with the loader).
        **export_kwargs: passed to ``export_onnx`` (``opset``, ``simplify``, ``check``, ...).
    """

    def __init__(
        self,
        model: nn.Module,
        input_spec: InputSpec,
        cache_dir: str | Path | None = None,
        **export_kwargs: Any,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise UsageError(f"OnnxFromModule needs an nn.Module, got {type(model).__name__}")
        if not isinstance(input_spec, InputSpec):
            raise UsageError("input_spec must be an InputSpec")
        self.model = model
        self.input_spec = input_spec
        self.export_kwargs = export_kwargs
        self._dir = WorkDir(cache_dir, "kd-onnx-")
        self.cache_dir = self._dir.path
        self.info: OnnxExportInfo | None = None
        self._key: str | None = None

    def key(self) -> str:
        """Fingerprint of the current model state and export options."""
        return module_fingerprint(self.model, self.input_spec, sorted(self.export_kwargs.items()))

    def __call__(self) -> Path:
        """Export if the model changed since the last call (or never exported); return the path."""
        key = self.key()
        if self.info is not None and key == self._key and self.info.path.is_file():
            return self.info.path
        path = self.cache_dir / f"{key[:32]}.onnx"
        sidecar = path.with_suffix(".json")
        if path.is_file() and sidecar.is_file():
            d = json.loads(sidecar.read_text(encoding="utf-8"))
            self.info = OnnxExportInfo(**{**d, "path": path})
            if self.info.sha256 != file_sha256(path):
                self.info = None  # a file changed behind our back: export again
        else:
            self.info = None
        if self.info is None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            # export to a temporary name first so that a crash never leaves a half file
            # under the cache name that a later call would trust
            tmp = path.with_suffix(f".tmp{id(self)}.onnx")
            try:
                info = export_onnx(self.model, self.input_spec, tmp, **self.export_kwargs)
                tmp.replace(path)
            finally:
                tmp.unlink(missing_ok=True)
            self.info = OnnxExportInfo(**{**asdict(info), "path": path})
            sidecar.write_text(json.dumps(self.info.to_dict()), encoding="utf-8")
        self._key = key
        return path

    def close(self) -> None:
        """Remove the private temporary folder, if any. Idempotent."""
        if self._dir.owned:
            self._dir.close()
            self.info = None

    def __enter__(self) -> OnnxFromModule:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = [
    "OnnxExportInfo",
    "OnnxFromModule",
    "export_onnx",
    "file_sha256",
    "module_fingerprint",
]
