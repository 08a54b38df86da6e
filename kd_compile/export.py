"""Artifacts of the chosen student: ``student.pt``, ``student.onnx`` (with its preprocessing in
the ONNX metadata), ``student.torchscript.pt``, ``student.pt2`` and, where TensorRT is present,
a serialized engine.

``student.pt`` holds the trained (unfolded) weights, which ``space.build(config)`` rebuilds;
``student.onnx``, the TorchScript and ``.pt2`` files and the engine hold the deployed form,
re-parameterisable blocks folded (``students.common.deployed``: a RepVGG block becomes one
conv), the form the search costed. Each file is checked against the eager student before it is
published; the ONNX file is required, the TorchScript and ``.pt2`` files are a convenience whose
failure is recorded (and shown in the report) rather than failing the run.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .errors import BackendUnavailableError, ExportError
from .profilers.base import InputSpec
from .search.space import Config
from .students.base import StudentSpace
from .students.common import deployed
from .teacher import save_checkpoint

RTOL, ATOL = 1e-3, 1e-4  # parity of an exported student with the eager one (float32 logits)


def space_kwargs(space: StudentSpace) -> dict[str, Any]:
    """The constructor arguments that rebuild ``space`` (stored in checkpoints).

    Spaces keep each constructor argument as an attribute of the same name (as ``TradeSpace``
    and ``CnnSpace`` do); those are read back through the signature.
    """
    import inspect

    kw: dict[str, Any] = {}
    for name in list(inspect.signature(type(space).__init__).parameters)[1:]:
        if hasattr(space, name):
            v = getattr(space, name)
            if isinstance(v, (bool, int, float, str, tuple, list)) or v is None:
                kw[name] = list(v) if isinstance(v, tuple) else v
    kw["input_shape"] = list(space.input_shape)
    kw["num_classes"] = space.num_classes
    return kw


def onnx_metadata(
    meta: dict[str, Any], space: StudentSpace, config: Config, input_shape: tuple[int, ...]
) -> dict[str, str]:
    """The ``metadata_props`` of ``student.onnx``: what a deployer needs besides the graph.

    Keys (values are strings; lists and dicts are JSON): ``channels``, ``input_size`` ("HxW"),
    ``mean``/``std`` (of ``x / 255``, per channel), ``interpolation``, ``crop_pct``,
    ``class_names``, ``kd_compile_version``, ``student_space``, ``student_config``, ``target``,
    ``teacher``, ``accuracy``, ``preprocessing`` (the whole record, with where each value came from).
    """
    pre = dict(meta.get("preprocessing") or {})
    norm = meta.get("normalize") or {}
    c, h, w = (int(v) for v in input_shape[-3:])
    mean = pre.get("mean") or norm.get("mean")
    std = pre.get("std") or norm.get("std")
    props = {
        "channels": str(c),
        "input_size": f"{h}x{w}",
        "mean": json.dumps([float(v) for v in mean]) if mean else "",
        "std": json.dumps([float(v) for v in std]) if std else "",
        "interpolation": str(pre.get("interpolation") or "bilinear"),
        "crop_pct": str(float(pre.get("crop_pct") or 1.0)),
        "pixel_scale": "1/255",
        "layout": "NCHW",
        "class_names": json.dumps(list(meta.get("class_names") or [])),
        "kd_compile_version": str(meta.get("kd_compile_version", "")),
        "student_space": space.name,
        "student_config": json.dumps(dict(config), sort_keys=True, default=str),
        "target": str(meta.get("target", "")),
        "teacher": str(meta.get("teacher", "")),
        "accuracy": "" if meta.get("accuracy") is None else f"{float(meta['accuracy']):.6g}",
        "preprocessing": json.dumps(pre, sort_keys=True, default=str),
    }
    return props


def write_onnx_metadata(path: Path, props: dict[str, str]) -> None:
    """Set ``props`` as the ONNX model's ``metadata_props`` (replacing keys of the same name)."""
    import onnx

    from .profilers.onnx_export import save_onnx

    model = onnx.load(str(path))
    kept = [p for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for k, v in props.items():
        model.metadata_props.add(key=k, value=v)
    save_onnx(model, path)


def _parity(eager: nn.Module, run: Any, x: torch.Tensor, what: str) -> float:
    """Max abs difference of ``run(x)`` from ``eager(x)``; ``ExportError`` beyond RTOL/ATOL."""
    with torch.inference_mode():
        ref, got = eager(x), run(x)
    if isinstance(got, (tuple, list)):
        got = got[0]
    if tuple(got.shape) != tuple(ref.shape):
        raise ExportError(f"{what}: output shape {tuple(got.shape)}, eager {tuple(ref.shape)} (input {tuple(x.shape)})")
    diff = float((got.float() - ref.float()).abs().max())
    if not torch.allclose(got.float(), ref.float(), rtol=RTOL, atol=ATOL):
        raise ExportError(f"{what}: outputs differ from the eager student (max abs diff {diff:.3g})")
    return diff


def _parity_record(
    fmt: str,
    eager: nn.Module,
    loaded: Any,
    what: str,
    xs: list[torch.Tensor],
    *,
    dynamic: bool,
    batch: int,
    optional: tuple[torch.Tensor, ...] = (),
) -> dict[str, Any]:
    """Check an exported student loaded back (``loaded``) against the eager one and return the
    check's record, the same for every exported format.

    Every input of ``xs`` must match (``ExportError`` otherwise); an ``optional`` input that does
    not marks the file as holding only its export batch size (``dynamic_batch`` False) instead.

    Returns:
        {status "ok", format, dynamic_batch, batch (None when dynamic, else the fixed batch
        size), max_abs_diff over the inputs checked, checked_batches}.
    """
    diff = max(_parity(eager, loaded, x, what) for x in xs)
    checked = list(xs)
    for x in optional:
        try:
            diff = max(diff, _parity(eager, loaded, x, what))
            checked.append(x)
        except Exception:  # e.g. a trace holds only at the batch size it was traced with
            dynamic = False
    return {
        "status": "ok",
        "format": fmt,
        "dynamic_batch": dynamic,
        "batch": None if dynamic else batch,
        "max_abs_diff": diff,
        "checked_batches": [int(x.shape[0]) for x in checked],
    }


def _inputs(spec: InputSpec, batches: tuple[int, ...]) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn((b, *spec.shape), generator=g) for b in batches]


def export_torchscript(model: nn.Module, spec: InputSpec, path: Path) -> dict[str, Any]:
    """Trace the (folded, eval) ``model`` with ``torch.jit.trace`` at ``spec.batch``, save it to
    ``path``, load it back and check it against ``model`` at that batch; ``dynamic_batch`` says
    whether it also matches at another batch size (a trace can bake a batch size in).

    Raises:
        ExportError: tracing, saving, loading or the parity check at ``spec.batch`` failed.
    """
    x, other = _inputs(spec, (spec.batch, spec.batch + 1))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit's deprecation and tracer notes
            with torch.no_grad():
                traced = torch.jit.trace(model, x, check_trace=False)
            tmp = path.with_suffix(".tmp")
            torch.jit.save(traced, str(tmp))
            tmp.replace(path)
            loaded = torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as exc:
        raise ExportError(f"TorchScript export failed: {type(exc).__name__}: {exc}") from None
    return _parity_record(
        "torchscript (torch.jit.trace)", model, loaded, "TorchScript student", [x], dynamic=True, batch=spec.batch,
        optional=(other,),
    )  # fmt: skip


def export_pt2(model: nn.Module, spec: InputSpec, path: Path) -> dict[str, Any]:
    """Export ``model`` with ``torch.export`` (batch dimension dynamic where the model allows it,
    else fixed at ``spec.batch``), save it with ``torch.export.save``, load it back and check it
    against ``model``. Returns the check's record (``dynamic_batch`` says which form was saved).

    Raises:
        ExportError: export, save, load or the parity check failed.
    """
    from torch.export import Dim

    xs = _inputs(spec, (2, 3))
    dynamic = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ep = torch.export.export(model, (xs[0],), dynamic_shapes=({0: Dim("batch", min=1, max=4096)},))
            except Exception:  # a model that pins its batch size (e.g. a reshape to a constant)
                dynamic = False
                xs = _inputs(spec, (spec.batch,))
                ep = torch.export.export(model, (xs[0],))
            tmp = path.with_suffix(".tmp.pt2")
            torch.export.save(ep, str(tmp))
            tmp.replace(path)
            loaded = torch.export.load(str(path)).module()
    except Exception as exc:
        raise ExportError(f".pt2 export failed: {type(exc).__name__}: {exc}") from None
    return _parity_record(
        "torch.export (ExportedProgram)", model, loaded, ".pt2 student", xs, dynamic=dynamic, batch=spec.batch
    )


def export_student(
    model: nn.Module,
    space: StudentSpace,
    config: Config,
    spec: InputSpec,
    out: Path,
    meta: dict[str, Any],
    *,
    engine: bool = True,
    engine_precision: str = "fp16",
    checks: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Path]:
    """Write the student's artifacts into ``out`` and return their paths by name.

    ``student.pt`` holds the weights plus the config (rebuilt through the registered space;
    loadable with ``torch.load(weights_only=True)``). They are the unfolded weights, the state
    of ``space.build(config)``, so the checkpoint loads like any kd-compile checkpoint and can be
    fine-tuned; fold it with ``students.common.deployed`` for inference. ``student.onnx`` is the
    folded student (RepVGG blocks as one conv each), simplified with onnxsim, its outputs checked
    against PyTorch with ONNX Runtime (``ExportError`` on mismatch), and its preprocessing, class
    names, config and target written into its ``metadata_props`` (``onnx_metadata``).
    ``student.torchscript.pt`` (``torch.jit.load``) and ``student.pt2`` (``torch.export.load``)
    are the folded student too, each checked against the eager one; when one of them fails, it
    is left out and the failure recorded in ``checks`` (a warning, not a failed run).

    Args:
        model: the trained student (unfolded, as ``space.build(config)`` returns it).
        space: its family.
        config: its config.
        spec: the input spec, (N, C, H, W) with the batch of the export.
        out: the output folder.
        meta: extra metadata for ``student.pt`` (and the ONNX metadata: ``preprocessing``,
            ``normalize``, ``class_names``, ``target``, ``kd_compile_version`` ...).
        engine: also build a TensorRT engine where TensorRT is present.
        engine_precision: its precision (fp32, fp16 or bf16).
        checks: filled with one record per exported file: ``status`` ("ok" | "failed"),
            ``max_abs_diff`` against the eager student, ``error`` when it failed.
    """
    from .profilers.onnx_export import export_onnx

    checks = {} if checks is None else checks
    out = Path(out)
    model = model.cpu().eval()
    paths: dict[str, Path] = {}
    paths["student.pt"] = save_checkpoint(
        out / "student.pt",
        space=space.name,
        space_kwargs=space_kwargs(space),
        config=config,
        state_dict=model.state_dict(),
        meta={**meta, "input_shape": list(spec.shape), "num_classes": space.num_classes},
    )
    folded = deployed(model)
    try:
        info = export_onnx(folded, spec, out / "student.onnx")
        write_onnx_metadata(Path(info.path), onnx_metadata(meta, space, config, spec.shape))
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(f"ONNX export of the student failed: {type(exc).__name__}: {exc}") from None
    paths["student.onnx"] = Path(info.path)
    checks["student.onnx"] = {"status": "ok", "format": "onnx", "checked_with": "onnxruntime"}
    for name, fn in (("student.torchscript.pt", export_torchscript), ("student.pt2", export_pt2)):
        try:
            checks[name] = fn(folded, spec, out / name)
            paths[name] = out / name
        except ExportError as exc:
            (out / name).unlink(missing_ok=True)
            checks[name] = {"status": "failed", "error": exc.line()[:500]}
    if engine:
        try:
            from .profilers.tensorrt import EngineFromOnnx

            paths["student.engine"] = Path(EngineFromOnnx(info.path, precision=engine_precision, cache_dir=out)())
            checks["student.engine"] = {"status": "ok", "format": f"tensorrt engine ({engine_precision})"}
        except BackendUnavailableError:
            pass  # no TensorRT here: the report says so
        except Exception as exc:  # an engine is a bonus; its failure must not lose the run
            warnings.warn(f"TensorRT engine build failed: {exc}", stacklevel=2)
            checks["student.engine"] = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    return paths
