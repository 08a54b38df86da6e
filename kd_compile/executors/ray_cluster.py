"""Candidate evaluations as Ray tasks, on a local Ray instance or on an existing cluster.

``RayExecutor`` runs ``fn(shared, config, fidelity, number) -> Trial`` (``evaluate_candidate``
over the run's ``RunContext``) as one Ray task per candidate, each reserving ``cpus_per_trial``
CPUs and ``gpus_per_trial`` GPUs. The shared context (data and the teacher's cached knowledge,
possibly gigabytes) goes to Ray's object store once, with ``ray.put``; every task receives the
reference and reads it from its node's store, so nothing large is pickled per task.

``evaluate_batch`` yields the trials as their tasks finish, so the search driver journals each
result as it arrives. A task whose worker process or node dies is retried once by Ray
(``max_retries=1``; the retry goes on from the candidate's last epoch checkpoint where the
task's machine sees the driver's ``--out``, ``evaluate.checkpoint_folder``); if it dies again the
candidate comes back as a ``failed`` trial with the reason, like any other failing candidate, and
the search goes on.

Ray is imported lazily (``kd-compile[ray]``). A cluster address is probed with a plain TCP
connection first, with a short timeout: ``ray.init`` on an address that does not answer retries
for minutes.
"""

from __future__ import annotations

import functools
import math
import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from ..errors import BackendUnavailableError, UsageError
from ..search.loop import Job
from ..search.trial import Trial, TrialStatus

__all__ = ["RayExecutor", "import_ray"]

CONNECT_TIMEOUT_S = 5.0

TrialFn = Callable[[Any, dict[str, Any], float, int], Trial]


def import_ray() -> Any:
    """The ``ray`` module, or a one-line ``UsageError`` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise UsageError(
            "--executor ray needs Ray, which is not installed", hint="pip install 'kd-compile[ray]'"
        ) from None
    return ray


def _run_trial(fn: TrialFn, shared: Any, config: dict[str, Any], fidelity: float, number: int, threads: int) -> Trial:
    """The Ray task: one candidate in a worker (``shared`` arrives resolved from the object store)."""
    import torch

    torch.set_num_threads(max(1, threads))
    return fn(shared, config, fidelity, number)


class RayExecutor:
    """Evaluate candidates as Ray tasks.

    Args:
        address: ``None`` starts a local Ray instance for this run; ``"auto"`` joins the cluster
            this machine belongs to (``ray start``); ``HOST:PORT`` (or ``ray://HOST:PORT``) joins
            that one. An already initialised Ray (``ray.init`` by the caller) is used as it is.
        cpus_per_trial, gpus_per_trial: resources each candidate's task reserves.
        workers: candidates evaluated at once; 0 = as many as the cluster's resources hold.
        num_cpus: CPUs of the local instance (``address=None``); default all of this machine's.
        connect_timeout_s: how long a cluster address may take to answer.
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        cpus_per_trial: float = 1.0,
        gpus_per_trial: float = 0.0,
        workers: int = 0,
        num_cpus: int | None = None,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
    ) -> None:
        if not cpus_per_trial > 0 or gpus_per_trial < 0 or workers < 0:
            raise UsageError("--cpus-per-trial must be > 0, --gpus-per-trial >= 0 and --parallel-trials >= 0")
        self.address = address
        self.cpus_per_trial = float(cpus_per_trial)
        self.gpus_per_trial = float(gpus_per_trial)
        self.workers = int(workers)
        self.num_cpus = num_cpus
        self.connect_timeout_s = connect_timeout_s
        self.puts = 0  # objects sent to the object store (the shared context: once per run)
        self._ray: Any = None
        self._owns_ray = False
        self._shared: tuple[Any, Any] | None = None  # (object, its ObjectRef)
        self._task: Any = None

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> RayExecutor:
        """Connect to (or start) Ray and size the batches; fails fast on a silent address."""
        ray = import_ray()
        if self.address is not None:
            probe(self.address, self.connect_timeout_s)
        if not ray.is_initialized():
            kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            try:
                if self.address is None:
                    ray.init(address="local", num_cpus=self.num_cpus, **kw)
                else:
                    ray.init(address=self.address, **kw)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                why = _first_line(exc) + (f" ({_first_line(exc.__cause__)[:200]})" if exc.__cause__ else "")
                token = "auth" in f"{exc} {exc.__cause__}".lower()  # a cluster started with token authentication
                raise BackendUnavailableError(
                    f"cannot join the Ray cluster at {self.address}: {why}",
                    hint="set RAY_AUTH_MODE=token (and its token) for a cluster that uses token authentication"
                    if token
                    else "check --ray-address",
                ) from None
            self._owns_ray = True
        self._ray = ray
        if self.workers == 0:
            self.workers = self.free_workers()
        return self

    def free_workers(self) -> int:
        """How many candidates the cluster's resources run at once (at least one, or an error)."""
        res = self._ray.cluster_resources()
        cpus, gpus = float(res.get("CPU", 0.0)), float(res.get("GPU", 0.0))
        n = math.floor(cpus / self.cpus_per_trial + 1e-9)
        if self.gpus_per_trial > 0:
            n = min(n, math.floor(gpus / self.gpus_per_trial + 1e-9))
        if n < 1:
            raise BackendUnavailableError(
                f"the Ray cluster has {cpus:g} CPUs and {gpus:g} GPUs: not enough for one candidate "
                f"({self.cpus_per_trial:g} CPUs, {self.gpus_per_trial:g} GPUs per trial)",
                hint="lower --cpus-per-trial / --gpus-per-trial, or add nodes",
            )
        return n

    def close(self) -> None:
        """Let the shared object go; shut Ray down if this executor started it."""
        self._shared = None
        if self._owns_ray and self._ray is not None:
            self._ray.shutdown()
        self._owns_ray = False

    def __enter__(self) -> RayExecutor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- work -----------------------------------------------------------------------------------

    def share(self, obj: Any) -> Any:
        """``obj``'s reference in the object store, put there on first use only."""
        if self._shared is None or self._shared[0] is not obj:
            self._shared = (obj, self._ray.put(obj))
            self.puts += 1
        return self._shared[1]

    def search_options(self, fn: TrialFn, shared: Any) -> dict[str, Any]:
        """``run_search``'s batch options: a batch per round of free workers, evaluated as tasks."""
        return {"batch_size": self.workers, "evaluate_batch": functools.partial(self.evaluate_batch, fn, shared)}

    def evaluate_batch(self, fn: TrialFn, shared: Any, jobs: Sequence[Job]) -> Iterator[Trial]:
        """Submit one task per job and yield each trial as its task finishes (any order).

        Args:
            fn: ``fn(shared, config, fidelity, number) -> Trial``, a top-level function.
            shared: what every candidate reads (``RunContext``); sent to the object store once.
            jobs: the candidates.
        """
        if self._ray is None:
            self.start()
        ray = self._ray
        ref = self.share(shared)
        task = self._remote()
        threads = max(1, int(self.cpus_per_trial))
        started = time.perf_counter()
        pending = {task.remote(fn, ref, j.config, j.fidelity, j.number, threads): j for j in jobs}
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for r in done:
                    yield self._result(r, pending.pop(r), started)
        finally:
            for r in pending:  # the driver stopped: do not leave candidates training
                try:
                    ray.cancel(r, force=True)
                except Exception:  # Ray already shut down: nothing is left running
                    pass

    def _result(self, ref: Any, job: Job, started: float) -> Trial:
        """A finished task's trial; a task that failed in Ray becomes a ``failed`` trial with why."""
        errors = self._ray.exceptions
        try:
            return self._ray.get(ref)
        except errors.RayTaskError as exc:  # fn raised (evaluate_candidate does not): a bug, recorded
            return _failed(job, f"task error: {_first_line(exc.cause or exc)}", started)
        except (errors.WorkerCrashedError, errors.NodeDiedError, errors.LocalRayletDiedError) as exc:
            return _failed(job, f"the worker died twice ({type(exc).__name__}: {_first_line(exc)})", started)
        except errors.RayError as exc:  # lost objects, cancelled tasks, ...
            return _failed(job, f"Ray: {type(exc).__name__}: {_first_line(exc)}", started)

    def _remote(self) -> Any:
        if self._task is None:
            self._task = self._ray.remote(_run_trial).options(
                num_cpus=self.cpus_per_trial, num_gpus=self.gpus_per_trial, max_retries=1, retry_exceptions=False
            )
        return self._task


def _failed(job: Job, why: str, started: float) -> Trial:
    return Trial(job.number, job.config, TrialStatus.FAILED, None, job.fidelity, {}, why, time.perf_counter() - started)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def probe(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Check that a Ray address answers a TCP connection within ``timeout_s``.

    Raises:
        BackendUnavailableError: no cluster found ("auto") or the address does not answer.
    """
    target = address
    if address == "auto":
        try:
            from ray._private.services import canonicalize_bootstrap_address

            target = canonicalize_bootstrap_address("auto") or ""
        except (ConnectionError, ValueError, ImportError) as exc:
            raise BackendUnavailableError(
                f"no running Ray cluster found for --ray-address auto: {_first_line(exc)}",
                hint="start one with 'ray start --head', or give its HOST:PORT",
            ) from None
    hostport = target.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--ray-address must be auto or HOST:PORT, got '{address}'")
    hint = "check --ray-address, or start a cluster with 'ray start --head'"
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise BackendUnavailableError(f"the Ray cluster at {address} does not answer ({why})", hint=hint) from None
    if "://" not in target:  # a GCS address: ask it for its cluster id (fails fast if it is not one)
        try:
            from ray._raylet import GcsClient
        except ImportError:  # another Ray layout: ray.init will tell
            return
        try:
            with _native_stderr_silenced():  # Ray's C++ client logs its retries there
                GcsClient(address=hostport, cluster_id=None)
        except Exception as exc:  # noqa: BLE001 (Ray raises its own RpcError types)
            if "auth" in str(exc).lower():  # a Ray head that wants its token: ray.init brings it
                return
            raise BackendUnavailableError(
                f"the Ray cluster at {address} does not answer as a Ray head ({_first_line(exc)})", hint=hint
            ) from None


@contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null (native code writes there, around ``sys.stderr``)."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
