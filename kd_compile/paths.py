"""Where kd-compile keeps files between runs: one cache-folder rule for every part.

``$KD_COMPILE_CACHE`` when set, else ``~/.cache/kd_compile``. Parts keep their files in a named
sub-folder (``cache_dir("teacher")``, ``cache_dir("engines")``); a private temporary folder is
used where a part asks for one and the cache cannot be written.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["cache_dir", "private_dir"]


def cache_dir(sub: str | None = None, *, create: bool = False) -> Path:
    """The cache root, or its sub-folder ``sub``.

    Args:
        sub: a sub-folder name (one path component, e.g. ``"teacher"``).
        create: make the folder (with parents) if it is missing.

    Raises:
        OSError: when ``create`` and the folder cannot be made (read-only home, full disk).
    """
    env = os.environ.get("KD_COMPILE_CACHE")
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "kd_compile"
    if sub is not None:
        if not sub or Path(sub).name != sub or sub in (".", ".."):
            raise ValueError(f"cache sub-folder must be one plain name, got {sub!r}")
        root = root / sub
    if create:
        root.mkdir(parents=True, exist_ok=True)
    return root


def private_dir(prefix: str) -> Path:
    """A fresh private temporary folder (the caller removes it)."""
    return Path(tempfile.mkdtemp(prefix=prefix))
