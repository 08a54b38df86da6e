"""PyTorch latency profiler: ``TorchProfiler`` (registered as ``"torch"``).

It times eager or ``torch.compile``d models with the shared timing loop of :mod:`.timing`
(``TimingPolicy``, default ``DEFAULT_TIMING``):

* CPU: the policy's clock (``time.perf_counter`` by default) around each call, under
  ``torch.inference_mode``, with ``torch.set_num_threads(threads)`` for the duration when
  ``threads`` is given.
* CUDA: CUDA events around each call (GPU time of the work the call enqueued, including
  launch gaps), optionally replaying a captured CUDA graph.

fp16/bf16 run a deep copy of the model cast to that dtype (weights and input), as a deployed
half-precision model would; the caller's model is never modified.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

from ..errors import BackendUnavailableError, UsageError
from .base import InputSpec, Measurement, Profiler, register_profiler
from .devices import cpu_device, cpu_name, cuda_device
from .timing import (
    CLOCK_TIMERS,
    TimingPolicy,
    TimingResult,
    measurement_from_timing,
    resolve_timing,
    time_calls,
    time_steps,
)

PRECISIONS = ("fp32", "fp16", "bf16")
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

DEFAULT_TIMING = TimingPolicy()  # 10 warm-up, 50..2000 runs, 1..60 s, median rel. SE 5%


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
        timing: the timing policy (``DEFAULT_TIMING`` when ``None``). Its clock times CPU
            runs (``"cpu"`` needs ``threads=1``); CUDA runs are timed with CUDA events.
        **timing_kw: overrides of single policy fields, also the older keywords ``warmup``,
            ``min_iters``, ``max_iters``, ``min_time_s``, ``max_time_s``, ``target_cv``.
    """

    name = "torch"

    def __init__(
        self,
        device: str | None = None,
        compile: bool = False,
        cuda_graphs: bool = False,
        precision: str = "fp32",
        threads: int | None = None,
        *,
        timing: TimingPolicy | None = None,
        **timing_kw: Any,
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
        self.timing = resolve_timing(timing, DEFAULT_TIMING, **timing_kw)
        if self.timing.clock == "cpu" and (self.device.type != "cpu" or threads != 1):
            # thread CPU time covers the calling thread only: the whole forward only without
            # an intra-op pool, and nothing of the GPU's work
            raise UsageError("clock='cpu' needs device='cpu' and threads=1", hint="use clock='wall'")

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
        # on cuda:N, N is the current device for the whole run: graph capture and the current
        # stream follow the current device, not the model's
        on_device = torch.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext()
        old_threads = torch.get_num_threads()
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        try:
            with on_device:
                run, _ = self._prepare(model, input_spec)
            with on_device, torch.inference_mode():
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
                "timer": "cuda_events" if self.device.type == "cuda" else CLOCK_TIMERS[self.timing.clock],
                "cpu_count": os.cpu_count(),
            },
        )

    def _time_cpu(self, run: Callable[[], Any]) -> TimingResult:
        return time_calls(run, self.timing)

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
        return time_steps(step, self.timing)


__all__ = [
    "DEFAULT_TIMING",
    "TorchProfiler",
    "cpu_name",  # re-exported from .devices for benchmarks/ort_stability.py
]
