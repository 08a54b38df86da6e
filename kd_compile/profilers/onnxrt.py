"""ONNX Runtime (CPU) latency profiler.

``OnnxRuntimeProfiler`` (registered as ``"onnxruntime"``) exports the model with
``export_onnx`` (cached by the model's structure and weights, so profiling the same model
again does not export again), opens an ``InferenceSession`` on ``CPUExecutionProvider`` with
graph optimisation ``ORT_ENABLE_ALL``, warms up, and times single runs with
``time.perf_counter`` until the median is stable (``time_adaptive``).

``profile_onnx(path, ...)`` does the same for an existing ``.onnx`` file.

Threads: ``threads=None`` leaves ``intra_op_num_threads`` at 0, i.e. ONNX Runtime's default
(one thread per physical core); the Measurement records the number ORT will use by that rule.
On a machine shared with other work, ``threads=1`` gives far steadier numbers: with several
intra-op threads, one preempted thread stalls the others at every barrier.

Clock: ``clock="wall"`` (default) times each run with ``time.perf_counter``, the latency a
user sees. Under heavy contention the wall clock also counts the time other processes hold
the core (on the 2-core reference machine at load 7-8, resnet18 measured 240 ms wall for
53 ms of CPU). ``clock="cpu"`` (``threads=1`` only) times the calling thread's CPU time
(``time.thread_time``), which with one intra-op thread is where ORT runs the whole graph; it
estimates the uncontended latency and stays repeatable on a loaded machine.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch.nn as nn

from ..errors import UsageError
from .base import InputSpec, Measurement, Profiler, lazy_import, register_profiler
from .onnx_export import ORT_HINT, OnnxFromModule, file_sha256
from .torch_timer import TimingResult, cpu_device, measurement_from_timing, time_adaptive

PRECISIONS = ("fp32",)


def physical_cores() -> int:
    """Physical cores available to this process (ORT's default intra-op thread count)."""
    try:
        allowed = os.sched_getaffinity(0)
    except AttributeError:  # not Linux
        allowed = set(range(os.cpu_count() or 1))
    cores: set[tuple[str, str]] = set()
    try:
        proc, phys = "", ""
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in list(f) + [""]:
                key, _, val = line.partition(":")
                key, val = key.strip(), val.strip()
                if key == "processor":
                    proc = val
                elif key == "physical id":
                    phys = val
                elif key == "core id" and proc and int(proc) in allowed:
                    cores.add((phys, val))
    except (OSError, ValueError):
        pass
    return len(cores) or len(allowed) or 1


def make_session(path: str | Path, threads: int | None = None) -> Any:
    """An ``InferenceSession`` on CPU with all graph optimisations and ``threads`` intra-op."""
    ort = lazy_import("onnxruntime", ORT_HINT)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = 0 if threads is None else int(threads)
    # one model at a time: inter-op parallelism only adds scheduling noise for CNNs
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _feed_for(sess: Any, spec: InputSpec | None) -> tuple[dict[str, np.ndarray], InputSpec]:
    inputs = sess.get_inputs()
    if len(inputs) != 1:
        raise UsageError(f"profile_onnx supports models with one input, this one has {len(inputs)}")
    inp = inputs[0]
    if spec is None:
        dims = list(inp.shape)
        if len(dims) != 4:
            raise UsageError(f"input '{inp.name}' has rank {len(dims)}, expected (N, C, H, W)")
        batch = dims[0] if isinstance(dims[0], int) and dims[0] > 0 else 1
        if not all(isinstance(d, int) and d > 0 for d in dims[1:]):
            raise UsageError(f"input '{inp.name}' has symbolic C/H/W {dims[1:]}; pass an InputSpec")
        spec = InputSpec(tuple(dims[1:]), batch=batch)  # type: ignore[arg-type]
    if inp.type != "tensor(float)":
        raise UsageError(f"input '{inp.name}' is {inp.type}; only float32 inputs are profiled")
    x = spec.example("cpu").numpy()
    return {inp.name: x}, spec


CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}


def _time_session(
    sess: Any, feed: dict[str, np.ndarray], timing_kw: dict[str, Any], clock: str = "wall"
) -> TimingResult:
    run = sess.run
    out_names = [o.name for o in sess.get_outputs()]
    now = CLOCKS[clock]

    def step() -> float:
        t0 = now()
        run(out_names, feed)
        return (now() - t0) * 1e3

    return time_adaptive(step, **timing_kw)


def _check_kw(threads: int | None, precision: str, clock: str = "wall") -> None:
    if threads is not None and threads < 1:
        raise UsageError(f"threads must be >= 1 or None, got {threads}")
    if clock not in CLOCKS:
        raise UsageError(f"clock must be one of {', '.join(CLOCKS)}, got '{clock}'")
    if clock == "cpu" and threads != 1:
        # thread CPU time covers the calling thread only, which runs the whole graph only
        # when ORT has no intra-op pool (threads=1)
        raise UsageError(
            "clock='cpu' needs threads=1", hint="use clock='wall' for multi-threaded runs"
        )
    if precision not in PRECISIONS:
        raise UsageError(
            f"onnxruntime profiler measures fp32 only, got precision '{precision}'",
            hint="use the torch or tensorrt profiler for fp16/bf16/int8",
        )


def profile_onnx(
    path: str | Path,
    input_spec: InputSpec | None = None,
    *,
    threads: int | None = None,
    warmup: int = 10,
    min_iters: int = 50,
    max_iters: int = 2000,
    min_time_s: float = 1.0,
    max_time_s: float = 60.0,
    target_cv: float = 0.05,
    precision: str = "fp32",
    clock: str = "wall",
) -> Measurement:
    """Measure an existing ``.onnx`` file with ONNX Runtime on this CPU.

    Args:
        path: the ONNX file (one float32 input ``(N, C, H, W)``).
        input_spec: input to feed; read from the file's static shape when ``None`` (a
            symbolic batch becomes 1).
        threads: intra-op threads (``None``: ONNX Runtime's default, one per physical core).
        warmup, min_iters, max_iters, min_time_s, max_time_s, target_cv: see
            ``torch_timer.time_adaptive``.
        precision: must be ``fp32`` (the file's own types are what runs).
        clock: ``"wall"`` (``time.perf_counter``: latency as a user sees it) or ``"cpu"``
            (``time.thread_time`` of the calling thread, ``threads=1`` only: the compute time
            without the time other processes hold the core, for shared machines).

    Returns:
        Measurement with ``method="measured"``, ``runtime="onnxruntime"``.
    """
    _check_kw(threads, precision, clock)
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"ONNX file not found: {path}")
    sess = make_session(path, threads)
    feed, spec = _feed_for(sess, input_spec)
    kw = dict(
        warmup=warmup,
        min_iters=min_iters,
        max_iters=max_iters,
        min_time_s=min_time_s,
        max_time_s=max_time_s,
        target_cv=target_cv,
    )
    timing = _time_session(sess, feed, kw, clock)
    return _measurement(timing, spec, threads, {"onnx_sha256": file_sha256(path)}, clock)


def _measurement(
    timing: TimingResult, spec: InputSpec, threads: int | None, extra: dict[str, Any], clock: str
) -> Measurement:
    ort = lazy_import("onnxruntime", ORT_HINT)
    return measurement_from_timing(
        timing,
        device=cpu_device(),
        runtime="onnxruntime",
        precision="fp32",
        batch=spec.batch,
        threads=physical_cores() if threads is None else threads,
        extra={
            "onnxruntime_version": ort.__version__,
            "provider": "CPUExecutionProvider",
            "graph_optimization": "ORT_ENABLE_ALL",
            "intra_op_num_threads_setting": 0 if threads is None else threads,
            "timer": "perf_counter" if clock == "wall" else "thread_time",
            "clock": clock,
            **extra,
        },
    )


@register_profiler("onnxruntime")
class OnnxRuntimeProfiler(Profiler):
    """Measured latency with ONNX Runtime's CPU execution provider.

    Args:
        threads: intra-op threads (``None``: ONNX Runtime's default, one per physical core).
        warmup, min_iters, max_iters, min_time_s, max_time_s, target_cv: see
            ``torch_timer.time_adaptive``.
        precision: ``fp32`` only (ORT on CPU runs the exported fp32 graph).
        opset: ONNX opset for the export.
        cache_dir: where exported files are kept; a private temporary folder (removed by
            ``close``) when ``None``.
        clock: ``"wall"`` or ``"cpu"`` (``threads=1`` only), see ``profile_onnx``.
    """

    name = "onnxruntime"

    def __init__(
        self,
        threads: int | None = None,
        warmup: int = 10,
        min_iters: int = 50,
        max_iters: int = 2000,
        min_time_s: float = 1.0,
        max_time_s: float = 60.0,
        target_cv: float = 0.05,
        precision: str = "fp32",
        opset: int = 17,
        cache_dir: str | Path | None = None,
        clock: str = "wall",
    ) -> None:
        _check_kw(threads, precision, clock)
        self.clock = clock
        self.threads = threads
        self.precision = precision
        self.opset = opset
        self.timing_kw: dict[str, Any] = dict(
            warmup=warmup,
            min_iters=min_iters,
            max_iters=max_iters,
            min_time_s=min_time_s,
            max_time_s=max_time_s,
            target_cv=target_cv,
        )
        self._own_dir = cache_dir is None
        self.cache_dir = (
            Path(tempfile.mkdtemp(prefix="kd-ort-")) if cache_dir is None else Path(cache_dir)
        )
        # ONNX sha256 -> session: a re-profiled model reuses its optimised session
        self._sessions: dict[str, Any] = {}

    def _impl(self, model: nn.Module, input_spec: InputSpec) -> Measurement:
        loader = OnnxFromModule(model, input_spec, cache_dir=self.cache_dir, opset=self.opset)
        path = loader()
        assert loader.info is not None
        sha = loader.info.sha256
        sess = self._sessions.get(sha)
        if sess is None:
            sess = self._sessions[sha] = make_session(path, self.threads)
        feed, spec = _feed_for(sess, input_spec)
        timing = _time_session(sess, feed, self.timing_kw, self.clock)
        return _measurement(
            timing,
            spec,
            self.threads,
            {
                "onnx_sha256": sha,
                "opset": loader.info.opset,
                "onnx_simplified": loader.info.simplified,
            },
            self.clock,
        )

    def close(self) -> None:
        self._sessions.clear()
        if self._own_dir:
            shutil.rmtree(self.cache_dir, ignore_errors=True)


__all__ = ["OnnxRuntimeProfiler", "make_session", "physical_cores", "profile_onnx"]
