"""The folder a profiler or loader keeps its files in: the caller's, or a private temporary one.

A caller that wants files kept between runs passes a folder, e.g.
``kd_compile.paths.cache_dir("engines", create=True)``; without one the files go to a fresh
private folder from ``kd_compile.paths.private_dir``, removed by ``close`` (or, failing that,
when the owner is garbage-collected). A caller's folder is never removed.
"""

from __future__ import annotations

import shutil
import weakref
from pathlib import Path

from ..paths import private_dir


class WorkDir:
    """``cache_dir`` when given, else a private temporary folder named ``<prefix>XXXXXXXX``.

    Args:
        cache_dir: the caller's folder (created on first write by the user of ``path``).
        prefix: name prefix of the private folder (``"kd-onnx-"``, ``"kd-trt-"``, ...).

    Attributes:
        path: the folder.
        owned: whether it is a private folder that ``close`` removes.
    """

    def __init__(self, cache_dir: str | Path | None, prefix: str) -> None:
        self.owned = cache_dir is None
        self.path = private_dir(prefix) if cache_dir is None else Path(cache_dir)
        self._remove = weakref.finalize(self, shutil.rmtree, str(self.path), True) if self.owned else None

    @property
    def closed(self) -> bool:
        """Whether a private folder has been removed (always False for a caller's folder)."""
        return self._remove is not None and not self._remove.alive

    def close(self) -> None:
        """Remove the private folder, if any. Idempotent."""
        if self._remove is not None:
            self._remove()


__all__ = ["WorkDir"]
