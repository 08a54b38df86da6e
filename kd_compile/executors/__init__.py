"""Where work runs: inline, in local worker processes, or as Ray tasks on a cluster.

The same top-level functions run everywhere: ``final.run_train_job`` over local processes
(``run_jobs``), ``evaluate.evaluate_candidate`` inline or as Ray tasks (``candidate_executor``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .local import InlineExecutor, ProcessExecutor, caller_main_hidden, parallel_workers, run_jobs
from .ray_cluster import RayExecutor, import_ray, probe

__all__ = [
    "InlineExecutor",
    "LocalCandidates",
    "ProcessExecutor",
    "RayExecutor",
    "caller_main_hidden",
    "candidate_executor",
    "check_executor",
    "parallel_workers",
    "run_jobs",
]


class LocalCandidates:
    """``--executor local``: candidates are evaluated in the driver, one after the other."""

    workers = 1

    def search_options(self, fn: Any, shared: Any) -> dict[str, Any]:
        """``run_search``'s batch options: none (its ``evaluate`` runs each candidate)."""
        return {}


def check_executor(kind: str, address: str | None) -> None:
    """Fail now, before any work, when ``--executor ray`` cannot run: Ray not installed, or a
    cluster address that does not answer (a one-line error, exit 8, within seconds)."""
    if kind != "ray":
        return
    import_ray()
    if address is not None:
        probe(address)


@contextmanager
def candidate_executor(
    kind: str,
    *,
    address: str | None = None,
    cpus_per_trial: float = 1.0,
    gpus_per_trial: float = 0.0,
    workers: int = 0,
) -> Iterator[LocalCandidates | RayExecutor]:
    """The executor a run's candidates are evaluated on: ``local`` (in the driver) or ``ray``
    (a started ``RayExecutor``, shut down on exit when it started Ray)."""
    if kind == "local":
        yield LocalCandidates()
        return
    with RayExecutor(address, cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial, workers=workers) as ex:
        yield ex
