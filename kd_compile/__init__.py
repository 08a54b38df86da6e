"""kd-compile: hardware-aware deployment compiler for PyTorch vision models.

Public API (imports stay light; heavy work happens inside the functions)::

    import kd_compile
    result = kd_compile.compile("teacher.pt", target="2080ti", max_params="4M", data="glyphs")
"""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import (  # noqa: E402  (each has its exit code: see the README)
    BackendUnavailableError,
    CheckpointError,
    ConstraintError,
    DataError,
    ExportError,
    KdCompileError,
    OutputExistsError,
    QualityGateError,
    ResumeError,
    SearchError,
    TargetError,
    TrainingError,
    UsageError,
)


def __getattr__(name: str):
    # lazy re-exports keep ``import kd_compile`` and ``kd-compile --help`` fast
    if name in ("compile", "profile", "calibrate", "CompileResult", "list_spaces", "list_strategies", "list_targets",
                "load_student"):
        from . import api

        return getattr(api, name)
    if name in ("CompileConfig", "Constraints", "Budget"):
        from . import config

        return getattr(config, name)
    if name in ("TargetProfile", "get_target"):
        from . import targets

        return getattr(targets, name)
    raise AttributeError(f"module 'kd_compile' has no attribute {name!r}")


__all__ = [
    "BackendUnavailableError", "CheckpointError", "ConstraintError", "DataError", "ExportError", "OutputExistsError",
    "QualityGateError", "ResumeError", "SearchError", "TargetError", "TrainingError", "UsageError",
    "Budget", "CompileConfig", "CompileResult", "Constraints", "KdCompileError", "TargetProfile",
    "calibrate", "compile", "get_target", "list_spaces", "list_strategies", "list_targets", "load_student",
    "profile", "__version__",
]
