"""Where trainings run: inline, or side by side in local worker processes.

Small students train poorly in parallel *inside* one process on a few CPU cores (their kernels
are too small for intra-op threads), so two independent trainings — the final KD student and its
CE-only twin — run faster as two single-threaded processes than one after the other. Workers
are started with ``spawn`` (no fork of a process holding torch threads) and get plain data:
the space name and arguments, the config, the data bundle and the teacher's cached logits.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Any

import torch


@dataclass
class TrainJob:
    """One student training, described by plain data so it can cross a process boundary."""

    space: str
    space_kwargs: dict[str, Any]
    config: dict[str, Any]
    seed: int
    train_cfg: Any  # kd_compile.distill.TrainConfig
    data: Any  # kd_compile.data.DataBundle
    train_logits: torch.Tensor | None = None
    val_logits: torch.Tensor | None = None
    threads: int | None = None


def run_train_job(job: TrainJob) -> tuple[dict[str, torch.Tensor], Any]:
    """Build the student, train it, return (state_dict, TrainResult)."""
    from .distill import TeacherCache, train_student
    from .students import create_space

    if job.threads:
        torch.set_num_threads(job.threads)
    kw = dict(job.space_kwargs)
    kw["input_shape"] = tuple(kw["input_shape"])
    space = create_space(job.space, **kw)
    torch.manual_seed(job.seed)
    model = space.build(job.config)
    cache = None
    if job.train_logits is not None:
        cache = TeacherCache.from_logits(job.train_logits, job.val_logits, job.data.y_val, job.data.y_train)
    res = train_student(model, job.data, job.train_cfg, cache)
    return {k: v.contiguous() for k, v in model.state_dict().items()}, res


def parallel_workers() -> int:
    """How many trainings to run side by side: one per core, at most two."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(2, n))


def run_jobs(jobs: list[TrainJob], workers: int) -> list[tuple[dict[str, torch.Tensor], Any]]:
    """Run ``jobs`` inline (``workers <= 1``) or in ``workers`` spawned processes, in order."""
    if workers <= 1 or len(jobs) <= 1:
        return [run_train_job(j) for j in jobs]
    for j in jobs:
        j.threads = j.threads or max(1, (os.cpu_count() or 1) // workers)
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=get_context("spawn")) as ex:
        return list(ex.map(run_train_job, jobs))
