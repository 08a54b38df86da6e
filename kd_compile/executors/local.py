"""Local executors: inline, or side by side in spawned worker processes.

An executor maps a top-level function over plain, picklable jobs (``final.TrainJob``) and
returns the results in order; the same functions run inline and in workers. Small students
train poorly in parallel *inside* one process on a few CPU cores (their kernels are too small
for intra-op threads), so two independent trainings — the final KD student and its CE-only twin
— run faster as two single-threaded processes than one after the other.

Workers are started with ``spawn`` (no fork of a process holding torch threads), and without
the caller's ``__main__``: multiprocessing's spawn would otherwise import the calling script
again in every worker, re-running a script that has no ``if __name__ == "__main__":`` guard (a
plain script calling ``kd_compile.compile``). The functions run in workers live in kd_compile's
modules, so the workers never need the caller's module.
"""

from __future__ import annotations

import os
import sys
import threading
import types
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from multiprocessing import get_context
from typing import TypeVar

__all__ = ["InlineExecutor", "ProcessExecutor", "parallel_workers", "run_jobs"]

J = TypeVar("J")
R = TypeVar("R")

_MAIN_LOCK = threading.Lock()


def parallel_workers() -> int:
    """How many trainings to run side by side: one per core, at most two."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(2, n))


class InlineExecutor:
    """Runs every job in this process, one after the other."""

    workers = 1

    def map(self, fn: Callable[[J], R], jobs: Sequence[J]) -> list[R]:
        return [fn(j) for j in jobs]


class ProcessExecutor:
    """Runs jobs in ``workers`` spawned processes, each with ``cores // workers`` torch threads.

    Jobs that have a ``threads`` attribute get it set (the worker applies it); the function must
    be importable at top level of a module other than the caller's ``__main__``.
    """

    def __init__(self, workers: int) -> None:
        self.workers = max(1, int(workers))

    def map(self, fn: Callable[[J], R], jobs: Sequence[J]) -> list[R]:
        if self.workers <= 1 or len(jobs) <= 1:
            return [fn(j) for j in jobs]
        threads = max(1, (os.cpu_count() or 1) // self.workers)
        for j in jobs:
            if hasattr(j, "threads") and not j.threads:  # type: ignore[attr-defined]
                j.threads = threads  # type: ignore[attr-defined]
        with ProcessPoolExecutor(max_workers=min(self.workers, len(jobs)), mp_context=get_context("spawn")) as ex:
            with caller_main_hidden():  # spawn starts the workers while the jobs are submitted
                futures = [ex.submit(fn, j) for j in jobs]
            return [f.result() for f in futures]


@contextmanager
def caller_main_hidden() -> Iterator[None]:
    """While processes are spawned, show multiprocessing a ``__main__`` with no file or module
    name, so the workers' preparation does not import (and run) the caller's script."""
    with _MAIN_LOCK:
        main = sys.modules.get("__main__")
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            yield
        finally:
            if main is not None:
                sys.modules["__main__"] = main


def run_jobs(fn: Callable[[J], R], jobs: Sequence[J], workers: int) -> list[R]:
    """Run ``fn`` over ``jobs`` inline (``workers <= 1``) or in ``workers`` processes, in order."""
    return (InlineExecutor() if workers <= 1 else ProcessExecutor(workers)).map(fn, jobs)
