"""Artifacts of the chosen student: ``student.pt``, ``student.onnx`` and, where TensorRT is
present, a serialized engine.

``student.pt`` holds the trained (unfolded) weights, which ``space.build(config)`` rebuilds;
``student.onnx`` and the engine hold the deployed form, re-parameterisable blocks folded
(``students.common.deployed``: a RepVGG block becomes one conv), the form the search costed.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch.nn as nn

from .errors import BackendUnavailableError, ExportError
from .profilers.base import InputSpec
from .search.space import Config
from .students.base import StudentSpace
from .students.common import deployed
from .teacher import save_checkpoint


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


def export_student(
    model: nn.Module,
    space: StudentSpace,
    config: Config,
    spec: InputSpec,
    out: Path,
    meta: dict[str, Any],
    *,
    engine: bool = True,
) -> dict[str, Path]:
    """Write the student's artifacts into ``out`` and return their paths by name.

    ``student.pt`` holds the weights plus the config (rebuilt through the registered space;
    loadable with ``torch.load(weights_only=True)``). They are the unfolded weights, the state
    of ``space.build(config)``, so the checkpoint loads like any kd-compile checkpoint and can be
    fine-tuned; fold it with ``students.common.deployed`` for inference. ``student.onnx`` is the
    folded student (RepVGG blocks as one conv each), simplified with onnxsim, and its outputs are
    checked against PyTorch with ONNX Runtime (``ExportError`` on mismatch).

    Args:
        model: the trained student (unfolded, as ``space.build(config)`` returns it).
        space: its family.
        config: its config.
        spec: the input spec, (N, C, H, W) with the batch of the export.
        out: the output folder.
        meta: extra metadata for ``student.pt``.
        engine: also build a TensorRT engine where TensorRT is present.
    """
    from .profilers.onnx_export import export_onnx

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
    try:
        info = export_onnx(deployed(model), spec, out / "student.onnx")
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(f"ONNX export of the student failed: {type(exc).__name__}: {exc}") from None
    paths["student.onnx"] = Path(info.path)
    if engine:
        try:
            from .profilers.tensorrt import EngineFromOnnx

            paths["student.engine"] = Path(EngineFromOnnx(info.path, precision="fp16", cache_dir=out)())
        except BackendUnavailableError:
            pass  # no TensorRT here: the report says so
        except Exception as exc:  # an engine is a bonus; its failure must not lose the run
            warnings.warn(f"TensorRT engine build failed: {exc}", stacklevel=2)
    return paths
