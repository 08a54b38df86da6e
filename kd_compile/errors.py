"""Error hierarchy. Every error a user can cause maps to one line and a distinct exit code."""

from __future__ import annotations


class KdCompileError(Exception):
    """Base class: a user-facing error with a one-line message and an exit code."""

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint

    def line(self) -> str:
        msg = str(self).strip().replace("\n", " ")
        return f"{msg} ({self.hint})" if self.hint else msg


class UsageError(KdCompileError):
    """An option has a bad value (unparseable size, unknown strategy, ...)."""

    exit_code = 2


class CheckpointError(KdCompileError):
    """The teacher checkpoint is missing, corrupt, unsafe or inconsistent."""

    exit_code = 3


class DataError(KdCompileError):
    """The data is missing, empty or does not fit the teacher."""

    exit_code = 4


class TargetError(KdCompileError):
    """Unknown or invalid target device profile."""

    exit_code = 5


class ConstraintError(KdCompileError):
    """The constraints cannot be met by any student of the search space."""

    exit_code = 6


class OutputExistsError(KdCompileError):
    """The output folder exists and --force/--resume was not given, another run holds it, or it
    cannot be written (read-only, or a write failed on a full disk: ``write_failure``)."""

    exit_code = 7


class BackendUnavailableError(KdCompileError):
    """An optional backend (TensorRT, Ray, ...) is not installed or has no device."""

    exit_code = 8


class SearchError(KdCompileError):
    """The search produced no usable candidate (every candidate failed)."""

    exit_code = 9


class ExportError(KdCompileError):
    """Export of the final student failed (ONNX export or numerical check)."""

    exit_code = 10


class ResumeError(KdCompileError):
    """The journal cannot be resumed (different configuration, corrupt file)."""

    exit_code = 11


class TrainingError(KdCompileError):
    """The final training of the chosen student diverged (non-finite loss or weights)."""

    exit_code = 12


class QualityGateError(KdCompileError):
    """The run finished, but the student fails a gate (--min-accuracy, --max-accuracy-drop,
    --min-speedup); the artifacts and the report are written."""

    exit_code = 13


class CandidateError(Exception):
    """A single candidate failed (NaN loss, export error). Recorded; the search goes on."""


# what a backend's allocation failure says, lower-cased: torch (CPU allocator, CUDA caching
# allocator), ONNX Runtime's arena, C++'s std::bad_alloc
_OOM_WORDS = ("out of memory", "can't allocate memory", "failed to allocate memory", "bad_alloc", "bad allocation")


def out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is a backend's allocation failure (torch, ONNX Runtime, std::bad_alloc): the
    input is too large for this machine, not a broken model."""
    if isinstance(exc, MemoryError):
        return True
    msg = str(exc).lower()
    return any(w in msg for w in _OOM_WORDS)


# what a failed write says when the disk is full, lower-cased; PyTorch's zip writer (torch.save)
# reports only a short write ("unexpected pos ..." / "PytorchStreamWriter failed writing file")
_DISK_FULL_WORDS = ("no space left on device", "disk quota exceeded")
_SHORT_WRITE_WORDS = ("pytorchstreamwriter failed writing", "unexpected pos")


def write_failure(exc: BaseException) -> str | None:
    """Why a file could not be written, when ``exc`` (or what caused it) is a full disk or quota
    or a short write; None for any other error."""
    import errno

    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return "no space left on device" if e.errno == errno.ENOSPC else "disk quota exceeded"
        msg = str(e).lower()
        for w in _DISK_FULL_WORDS:
            if w in msg:
                return w
        if any(w in msg for w in _SHORT_WRITE_WORDS):
            return "a file was written short (is the disk full?)"
        e = e.__cause__ or e.__context__
    return None
