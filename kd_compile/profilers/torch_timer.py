"""PyTorch latency profiler, plus the adaptive timing loop all measuring profilers share.

``time_adaptive`` runs a step function until the median is known well enough: at least
``min_iters`` runs and ``min_time_s`` seconds, then it stops as soon as the relative standard
error of the median falls below ``target_cv`` (or at ``max_iters`` / ``max_time_s``). The
standard error of the median is estimated robustly from the median absolute deviation
(``1.2533 * 1.4826 * MAD / sqrt(n)``, the normal-theory value), so a few preempted runs on a
shared machine do not stop the loop early or late.

``TorchProfiler`` (registered as ``"torch"``) times eager or ``torch.compile``d models:

* CPU: wall clock (``time.perf_counter``) around each call, under ``torch.inference_mode``,
  with ``torch.set_num_threads(threads)`` for the duration when ``threads`` is given.
* CUDA: CUDA events around each call (GPU time of the work the call enqueued, including
  launch gaps), optionally replaying a captured CUDA graph.

fp16/bf16 run a deep copy of the model cast to that dtype (weights and input), as a deployed
half-precision model would; the caller's model is never modified.
"""

from __future__ import annotations

import copy
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ..errors import BackendUnavailableError, UsageError
from .base import InputSpec, Measurement, Profiler, register_profiler

PRECISIONS = ("fp32", "fp16", "bf16")
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# normal-theory constants: sigma = 1.4826 * MAD, se(median) = 1.2533 * sigma / sqrt(n)
_MAD_TO_SIGMA = 1.4826
_SE_MEDIAN = 1.2533


@dataclass(frozen=True)
class TimingResult:
    """Per-run latencies of one timing loop and why it stopped.

    Attributes:
        samples_ms: one latency per timed run, in run order, milliseconds.
        stopped_by: ``"converged"``, ``"max_iters"`` or ``"max_time"``.
        wall_s: seconds the timed part took (warm-up excluded).
        warmup: number of untimed warm-up runs.
    """

    samples_ms: tuple[float, ...]
    stopped_by: str
    wall_s: float
    warmup: int
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.samples_ms)


def latency_stats(samples_ms: Any) -> dict[str, float]:
    """Summary statistics of latency samples.

    Args:
        samples_ms: 1-D sequence of per-run latencies in ms (at least one).

    Returns:
        dict with ``p50``, ``p90``, ``p99``, ``mean``, ``min``, ``max``, ``std``,
        ``cv`` (robust: 1.4826 * MAD / median) and ``median_rel_se`` (relative standard
        error of the median, the stopping criterion of ``time_adaptive``).
    """
    a = np.asarray(samples_ms, dtype=np.float64)
    if a.ndim != 1 or a.size == 0:
        raise ValueError("latency_stats needs a non-empty 1-D sequence")
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    mad = float(np.median(np.abs(a - p50)))
    sigma = _MAD_TO_SIGMA * mad
    cv = sigma / p50 if p50 > 0 else math.inf
    rel_se = _SE_MEDIAN * cv / math.sqrt(a.size)
    return {
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "mean": float(a.mean()),
        "min": float(a.min()),
        "max": float(a.max()),
        "std": float(a.std(ddof=1)) if a.size > 1 else 0.0,
        "cv": float(cv),
        "median_rel_se": float(rel_se),
    }


def time_adaptive(
    step: Callable[[], float],
    *,
    warmup: int = 10,
    min_iters: int = 50,
    max_iters: int = 2000,
    min_time_s: float = 1.0,
    max_time_s: float = 60.0,
    target_cv: float = 0.05,
) -> TimingResult:
    """Time ``step`` until its median latency is stable.

    Args:
        step: runs the workload once and returns its latency in ms.
        warmup: untimed runs first (allocator, caches, lazy initialisation, JIT).
        min_iters: never stop before this many timed runs.
        max_iters: always stop at this many timed runs.
        min_time_s: never stop before this many seconds of timed runs.
        max_time_s: always stop after this many seconds of timed runs.
        target_cv: stop once the relative standard error of the median is below this.

    Returns:
        TimingResult with the samples and the statistics of ``latency_stats``.
    """
    if min_iters < 1 or max_iters < min_iters:
        raise UsageError(f"need 1 <= min_iters <= max_iters, got {min_iters}, {max_iters}")
    if warmup < 0 or min_time_s < 0 or max_time_s <= 0 or target_cv <= 0:
        raise UsageError("warmup, min_time_s must be >= 0; max_time_s, target_cv > 0")
    for _ in range(warmup):
        step()
    samples: list[float] = []
    start = time.perf_counter()
    next_check = min_iters
    stopped_by = "max_iters"
    while len(samples) < max_iters:
        samples.append(float(step()))
        elapsed = time.perf_counter() - start
        if elapsed >= max_time_s:
            stopped_by = "max_time"
            break
        n = len(samples)
        if n >= next_check and elapsed >= min_time_s:
            # checking every ~5% of samples keeps the O(n log n) median cheap
            next_check = n + max(1, n // 20)
            if latency_stats(samples)["median_rel_se"] <= target_cv:
                stopped_by = "converged"
                break
    wall = time.perf_counter() - start
    return TimingResult(tuple(samples), stopped_by, wall, warmup, latency_stats(samples))


@lru_cache(maxsize=1)
def cpu_name() -> str:
    """The processor's model name (``/proc/cpuinfo``), else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cpu_device() -> str:
    """Device string of this CPU, as measured profilers report it: ``cpu:<model name>``."""
    return f"cpu:{cpu_name()}"


def cuda_device(index: int | None = None) -> str:
    """Device string of a CUDA GPU: ``cuda:<device name>``."""
    idx = torch.cuda.current_device() if index is None else index
    return f"cuda:{torch.cuda.get_device_name(idx)}"


def measurement_from_timing(
    timing: TimingResult,
    *,
    device: str,
    runtime: str,
    precision: str,
    batch: int,
    threads: int | None,
    extra: dict[str, Any] | None = None,
) -> Measurement:
    """A ``method="measured"`` Measurement from a timing loop (latency = p50)."""
    s = timing.stats
    ex = {
        "mean_ms": s["mean"],
        "min_ms": s["min"],
        "max_ms": s["max"],
        "median_rel_se": s["median_rel_se"],
        "stopped_by": timing.stopped_by,
        "timed_wall_s": timing.wall_s,
        "warmup": timing.warmup,
    }
    ex.update(extra or {})
    return Measurement(
        method="measured",
        device=device,
        runtime=runtime,
        precision=precision,
        batch=batch,
        latency_ms=s["p50"],
        p50_ms=s["p50"],
        p90_ms=s["p90"],
        p99_ms=s["p99"],
        cv=s["cv"],
        iterations=timing.n,
        threads=threads,
        extra=ex,
    )


@register_profiler("torch")
class TorchProfiler(Profiler):
    """Measured latency of a PyTorch model, eager or compiled, on CPU or one CUDA GPU.

    Args:
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; default CUDA when available.
        compile: run ``torch.compile(model)`` first (mode ``reduce-overhead`` when
            ``cuda_graphs`` is also set, since that mode is Inductor's CUDA-graph path).
        cuda_graphs: capture the forward in a CUDA graph and time replays (CUDA only).
        precision: ``fp32``, ``fp16`` or ``bf16`` (a cast copy of the model).
        threads: CPU intra-op threads while timing (``torch.set_num_threads``); ``None`` keeps
            the current setting.
        warmup, min_iters, max_iters, min_time_s, max_time_s, target_cv: see ``time_adaptive``.
    """

    name = "torch"

    def __init__(
        self,
        device: str | None = None,
        compile: bool = False,
        cuda_graphs: bool = False,
        precision: str = "fp32",
        threads: int | None = None,
        warmup: int = 10,
        min_iters: int = 50,
        max_iters: int = 2000,
        min_time_s: float = 1.0,
        max_time_s: float = 60.0,
        target_cv: float = 0.05,
    ) -> None:
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if self.device.type not in ("cpu", "cuda"):
            raise UsageError(f"torch profiler device must be cpu or cuda, got '{device}'")
        if precision not in PRECISIONS:
            raise UsageError(
                f"torch profiler precision must be one of {', '.join(PRECISIONS)}, "
                f"got '{precision}'"
            )
        if cuda_graphs and self.device.type != "cuda":
            raise UsageError("cuda_graphs=True needs a CUDA device")
        if threads is not None and threads < 1:
            raise UsageError(f"threads must be >= 1, got {threads}")
        self.compile = compile
        self.cuda_graphs = cuda_graphs
        self.precision = precision
        self.threads = threads
        self.timing_kw: dict[str, Any] = dict(
            warmup=warmup,
            min_iters=min_iters,
            max_iters=max_iters,
            min_time_s=min_time_s,
            max_time_s=max_time_s,
            target_cv=target_cv,
        )

    def _prepare(self, model: nn.Module, spec: InputSpec) -> tuple[Callable[[], Any], torch.Tensor]:
        dtype = _DTYPES[self.precision]
        # a private copy: casting, moving and compiling must not change the caller's model
        m = copy.deepcopy(model).eval().to(device=self.device, dtype=dtype)
        x = spec.example(self.device).to(dtype)
        fn: Callable[[torch.Tensor], Any] = m
        if self.compile:
            mode = "reduce-overhead" if self.cuda_graphs else None
            fn = torch.compile(m, mode=mode)
        if self.cuda_graphs and not self.compile:
            return self._capture_graph(fn, x), x
        return (lambda: fn(x)), x

    def _capture_graph(
        self, fn: Callable[[torch.Tensor], Any], x: torch.Tensor
    ) -> Callable[[], Any]:
        # warm-up on a side stream before capture, as torch.cuda.graphs documents: lazy
        # initialisation (cuDNN heuristics, allocator pools) must not happen inside capture
        s = torch.cuda.Stream(device=self.device)
        s.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(s), torch.inference_mode():
            for _ in range(3):
                fn(x)
        torch.cuda.current_stream(self.device).wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph):
            fn(x)
        return graph.replay

    def _impl(self, model: nn.Module, input_spec: InputSpec) -> Measurement:
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailableError(
                "torch profiler: CUDA device requested but torch.cuda.is_available() is False",
                hint="use device='cpu' or run on a machine with an NVIDIA GPU",
            )
        run, _ = self._prepare(model, input_spec)
        old_threads = torch.get_num_threads()
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode():
                if self.device.type == "cuda":
                    timing = self._time_cuda(run)
                    device = cuda_device(self.device.index)
                else:
                    timing = self._time_cpu(run)
                    device = cpu_device()
        finally:
            torch.set_num_threads(old_threads)
        threads = torch.get_num_threads() if self.threads is None else self.threads
        return measurement_from_timing(
            timing,
            device=device,
            runtime="torch",
            precision=self.precision,
            batch=input_spec.batch,
            threads=threads if self.device.type == "cpu" else None,
            extra={
                "compile": self.compile,
                "cuda_graphs": self.cuda_graphs,
                "torch_version": torch.__version__,
                "timer": "cuda_events" if self.device.type == "cuda" else "perf_counter",
                "cpu_count": os.cpu_count(),
            },
        )

    def _time_cpu(self, run: Callable[[], Any]) -> TimingResult:
        def step() -> float:
            t0 = time.perf_counter()
            run()
            return (time.perf_counter() - t0) * 1e3

        return time_adaptive(step, **self.timing_kw)

    def _time_cuda(self, run: Callable[[], Any]) -> TimingResult:
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        stream = torch.cuda.current_stream(self.device)

        def step() -> float:
            start.record(stream)
            run()
            end.record(stream)
            end.synchronize()
            return float(start.elapsed_time(end))

        torch.cuda.synchronize(self.device)
        return time_adaptive(step, **self.timing_kw)


__all__ = [
    "TimingResult",
    "TorchProfiler",
    "cpu_device",
    "cpu_name",
    "cuda_device",
    "latency_stats",
    "measurement_from_timing",
    "time_adaptive",
]
