"""Exclusive file locks (``flock``) that only the process taking them holds.

A forked child (a ``DataLoader`` worker, a forked pool worker) inherits its parent's open files
and with them any ``flock`` the parent holds: a run killed with ``kill -9`` kept its output
folder "in use by another run" until every worker it had forked noticed its death (seconds),
so a ``--resume`` started at once was refused. Every lock taken here is closed in each forked
child right after the fork (``os.register_at_fork``): the child drops its reference without
unlocking, and the lock is released the moment its holder dies.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

__all__ = ["release", "try_lock"]

_HELD: set[IO[str]] = set()


def try_lock(path: Path) -> IO[str] | None:
    """Open ``path`` (created if missing) and take an exclusive ``flock`` on it without waiting.

    Returns:
        the open file holding the lock, or None when another process holds it.

    Raises:
        OSError: the file cannot be opened.
    """
    fh = open(path, "a+", encoding="utf-8")  # noqa: SIM115 (held until release)
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        return None
    _HELD.add(fh)
    return fh


def release(fh: IO[str]) -> None:
    """Drop a lock taken with :func:`try_lock` (closing its file releases it)."""
    _HELD.discard(fh)
    if not fh.closed:
        fh.close()


def _drop_in_child() -> None:
    # a forked child closes its copies (nothing is buffered: the holders flush what they write);
    # no LOCK_UN, which would unlock the parent's lock too
    for fh in list(_HELD):
        try:
            fh.close()
        except OSError:
            pass
    _HELD.clear()


os.register_at_fork(after_in_child=_drop_in_child)
