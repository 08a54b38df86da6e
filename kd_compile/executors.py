"""Where work runs: inline, or side by side in local worker processes.

An executor maps a top-level function over plain, picklable jobs (``evaluate_candidate``'s
arguments, ``final.TrainJob``) and returns the results in order; the same functions run inline
and in workers. Small students train poorly in parallel *inside* one process on a few CPU cores
(their kernels are too small for intra-op threads), so two independent trainings — the final KD
student and its CE-only twin — run faster as two single-threaded processes than one after the
other. Workers are started with ``spawn`` (no fork of a process holding torch threads).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import TypeVar

__all__ = ["InlineExecutor", "ProcessExecutor", "parallel_workers", "run_jobs"]

J = TypeVar("J")
R = TypeVar("R")


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
    be importable at top level.
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
            return list(ex.map(fn, jobs))


def run_jobs(fn: Callable[[J], R], jobs: Sequence[J], workers: int) -> list[R]:
    """Run ``fn`` over ``jobs`` inline (``workers <= 1``) or in ``workers`` processes, in order."""
    return (InlineExecutor() if workers <= 1 else ProcessExecutor(workers)).map(fn, jobs)


