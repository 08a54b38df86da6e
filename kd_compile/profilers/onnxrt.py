"""ONNX Runtime latency profiler: on the CPU, or on a CUDA GPU with ``onnxruntime-gpu``.

``OnnxRuntimeProfiler`` (registered as ``"onnxruntime"``) exports the model with
``export_onnx`` (cached by the model's structure and weights, so profiling the same model
again does not export again), opens an ``InferenceSession`` on ``CPUExecutionProvider`` with
graph optimisation ``ORT_ENABLE_ALL``, and times single runs with the shared timing loop of
:mod:`.timing` (``TimingPolicy``, default ``DEFAULT_TIMING``: 10 warm-up runs, then 50 to 2000
runs over 1 to 60 s until the median's relative standard error is below 5%).
``TimingPolicy.fast()`` (5 warm-up runs, at least 20 runs and 0.25 s) is the quick variant.

``profile_onnx(path, ...)`` does the same for an existing ``.onnx`` file.

Threads: ``threads=None`` leaves ``intra_op_num_threads`` at 0, i.e. ONNX Runtime's default
(one thread per physical core); the Measurement records the number ORT will use by that rule.
On a machine shared with other work, ``threads=1`` gives far steadier numbers: with several
intra-op threads, one preempted thread stalls the others at every barrier.

Precision: ``fp32`` runs the exported graph as it is; ``fp16`` (GPU providers only, as a
half-precision deployment runs) runs it converted to fp16 with ONNX Runtime's own
``onnxruntime.transformers.float16`` (input and output stay fp32, cast at the graph's ends), on the
CUDA provider and on the TensorRT provider alike. The TensorRT provider also gets
``trt_fp16_enable``, which is all a TensorRT 10 build needs; TensorRT 11 removed weak typing and its
fp16 builder flag (ONNX Runtime's TensorRT 11 builds guard the removed calls out:
microsoft/onnxruntime#28611), so there an engine takes its precision from the graph and the flag
cannot take effect. A measurement on the TensorRT
provider is labelled runtime ``tensorrt`` (TensorRT's engines ran it; ``extra["provider"]`` says
through ONNX Runtime).

Clock (the policy's ``clock``): ``"wall"`` (default) times each run with ``time.perf_counter``,
the latency a user sees. Under heavy contention the wall clock also counts the time other
processes hold the core (on the 2-core reference machine at load 7-8, resnet18 measured 240 ms wall for
53 ms of CPU). ``"cpu"`` (``threads=1`` only) times the calling thread's CPU time
(``time.thread_time``), which with one intra-op thread is where ORT runs the whole graph; it
estimates the uncontended latency and stays repeatable on a loaded machine.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch.nn as nn

from ..errors import UsageError
from .base import InputSpec, Measurement, Profiler, lazy_import, register_profiler
from .devices import cpu_device
from .onnx_export import ORT_HINT, OnnxFromModule, file_sha256, save_onnx
from .timing import CLOCK_TIMERS, TimingPolicy, TimingResult, measurement_from_timing, resolve_timing, time_calls
from .workdir import WorkDir

PRECISIONS = ("fp32", "fp16")  # fp16: on a GPU provider only (no half-precision deployment runs on a CPU here)
DEFAULT_TIMING = TimingPolicy()  # 10 warm-up, 50..2000 runs, 1..60 s, median rel. SE 5%


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


# execution providers by short name; "cuda" and "tensorrt" need the onnxruntime-gpu wheel
PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


def available_providers() -> list[str]:
    """Short names of the execution providers this ONNX Runtime build offers (``[]`` without ORT)."""
    try:
        import onnxruntime as ort
    except Exception:  # not installed, or a broken native library
        return []
    have = set(ort.get_available_providers())
    return [k for k, v in PROVIDERS.items() if v in have]


@functools.cache
def provider_starts(provider: str) -> bool:
    """Whether ONNX Runtime's ``provider`` actually runs a session here: built in (it is in
    :func:`available_providers`) *and* able to start (a GPU provider whose CUDA libraries do not
    load is listed, yet ORT quietly runs its sessions on the CPU). Probed once per process on a
    one-op model."""
    if provider == "cpu":
        return True
    if provider not in available_providers():
        return False
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    ort = lazy_import("onnxruntime", ORT_HINT)
    try:
        sess = ort.InferenceSession(
            model.SerializeToString(),
            providers=[PROVIDERS[provider], "CPUExecutionProvider"],
        )
    except Exception:  # noqa: BLE001 -- a provider that cannot start is the answer, not an error
        return False
    return PROVIDERS[provider] in sess.get_providers()


def make_session(path: str | Path, threads: int | None = None, provider: str = "cpu", fp16: bool = False) -> Any:
    """An ``InferenceSession`` with all graph optimisations and ``threads`` intra-op, on the
    execution provider ``provider`` (cpu, cuda, tensorrt; the GPU ones fall back to CPU for
    ops they lack, as ORT does); ``fp16`` sets the TensorRT provider's ``trt_fp16_enable`` (a session
    runs whatever types the file has: feed it :func:`to_fp16`'s graph for fp16, module docstring)."""
    ort = lazy_import("onnxruntime", ORT_HINT)
    if provider not in PROVIDERS:
        raise UsageError(f"unknown ONNX Runtime provider '{provider}' ({', '.join(PROVIDERS)})")
    if provider != "cpu" and provider not in available_providers():
        from ..errors import BackendUnavailableError

        raise BackendUnavailableError(
            f"ONNX Runtime has no {PROVIDERS[provider]} here (has: {', '.join(available_providers()) or 'none'})",
            hint="pip install onnxruntime-gpu on a machine with an NVIDIA GPU",
        )
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = 0 if threads is None else int(threads)
    # one model at a time: inter-op parallelism only adds scheduling noise for CNNs
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # fatal only: ORT's errors reach us as exceptions, which kd-compile words in one line; its own
    # coloured log line would come first on stderr (an allocation failure at a batch too large)
    so.log_severity_level = 4
    first: Any = PROVIDERS[provider]
    if provider == "tensorrt":
        first = (PROVIDERS[provider], trt_provider_options(fp16))
    chain = [first] + (["CPUExecutionProvider"] if provider != "cpu" else [])
    sess = ort.InferenceSession(str(path), so, providers=chain)
    if PROVIDERS[provider] not in sess.get_providers():
        # ORT falls back to the CPU, with only a log line, when a GPU provider fails to start
        # (no CUDA/cuDNN libraries it can load): a number timed so would be the CPU's
        from ..errors import BackendUnavailableError

        raise BackendUnavailableError(
            f"ONNX Runtime could not start {PROVIDERS[provider]} "
            f"(the session runs on {', '.join(sess.get_providers())})",
            hint="check that the CUDA and cuDNN libraries onnxruntime-gpu needs are installed",
        )
    return sess


def trt_provider_options(fp16: bool) -> dict[str, Any]:
    """ONNX Runtime's TensorRT provider options: fp16 as asked, and its engine and timing caches
    on disk (``<cache>/ort-trt``; ONNX Runtime keys an engine by the graph, the GPU and the
    TensorRT version), so a candidate seen before is not built again."""
    from ..paths import cache_dir

    opts: dict[str, Any] = {"trt_fp16_enable": bool(fp16)}
    try:
        where = str(cache_dir("ort-trt", create=True))
    except OSError:  # a read-only cache: engines are built each time, nothing else changes
        return opts
    return {**opts, "trt_engine_cache_enable": True, "trt_engine_cache_path": where,
            "trt_timing_cache_enable": True, "trt_timing_cache_path": where}


def to_fp16(path: str | Path, out: str | Path | None = None) -> Path:
    """The ONNX file at ``path`` converted to fp16 at ``out`` (default: beside it, ``<stem>.fp16.onnx``;
    reused when present) with ONNX Runtime's ``onnxruntime.transformers.float16``: weights and
    activations in fp16, the graph's input and output kept fp32 (a cast at each end), as a
    half-precision deployment feeds it."""
    path = Path(path)
    out = path.with_name(path.stem + ".fp16.onnx") if out is None else Path(out)
    if out.is_file():
        return out
    onnx = lazy_import("onnx", ORT_HINT)
    lazy_import("onnxruntime", ORT_HINT)
    from onnxruntime.transformers.float16 import convert_float_to_float16

    half = convert_float_to_float16(onnx.load(str(path)), keep_io_types=True)
    _sort_nodes(half.graph)  # the converter appends its input casts last; ONNX wants producers first
    return save_onnx(half, out)


def _sort_nodes(graph: Any) -> None:
    """Reorder ``graph``'s nodes so that each comes after the producers of its inputs (nodes
    whose inputs are ready keep their relative order)."""
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        rest = []
        for n in pending:
            if all(i in ready for i in n.input):
                ordered.append(n)
                ready.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):  # a cycle or a dangling input: leave the order to the runtime
            ordered.extend(rest)
            break
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


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


def _time_session(
    sess: Any, feed: dict[str, np.ndarray], policy: TimingPolicy, provider: str = "cpu"
) -> TimingResult:
    out_names = [o.name for o in sess.get_outputs()]
    if provider == "cpu":
        run = sess.run
        return time_calls(lambda: run(out_names, feed), policy)
    # on a GPU: the input lives on the device and outputs stay there (IO binding), so the
    # timing is the model's, not a host-to-device copy per call
    ort = lazy_import("onnxruntime", ORT_HINT)
    binding = sess.io_binding()
    for name, x in feed.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0))
    for name in out_names:
        binding.bind_output(name, "cuda")
    return time_calls(lambda: sess.run_with_iobinding(binding), policy)


def _check_kw(threads: int | None, precision: str, policy: TimingPolicy, provider: str = "cpu") -> None:
    if threads is not None and threads < 1:
        raise UsageError(f"threads must be >= 1 or None, got {threads}")
    if policy.clock == "cpu" and threads != 1:
        # thread CPU time covers the calling thread only, which runs the whole graph only
        # when ORT has no intra-op pool (threads=1)
        raise UsageError(
            "clock='cpu' needs threads=1", hint="use clock='wall' for multi-threaded runs"
        )
    if precision not in PRECISIONS or (precision != "fp32" and provider == "cpu"):
        where = "fp32 on the CPU, fp32 or fp16 on a GPU provider"
        raise UsageError(
            f"onnxruntime profiler measures {where}; got precision '{precision}' on provider '{provider}'",
            hint="use the torch or tensorrt profiler for the other precisions",
        )


def profile_onnx(
    path: str | Path,
    input_spec: InputSpec | None = None,
    *,
    threads: int | None = None,
    precision: str = "fp32",
    timing: TimingPolicy | None = None,
    **timing_kw: Any,
) -> Measurement:
    """Measure an existing ``.onnx`` file with ONNX Runtime on this CPU.

    Args:
        path: the ONNX file (one float32 input ``(N, C, H, W)``).
        input_spec: input to feed; read from the file's static shape when ``None`` (a
            symbolic batch becomes 1).
        threads: intra-op threads (``None``: ONNX Runtime's default, one per physical core).
        precision: must be ``fp32`` (the file's own types are what runs).
        timing: the timing policy (``DEFAULT_TIMING`` when ``None``). Its clock is ``"wall"``
            (``time.perf_counter``: latency as a user sees it) or ``"cpu"``
            (``time.thread_time`` of the calling thread, ``threads=1`` only: the compute time
            without the time other processes hold the core, for shared machines).
        **timing_kw: overrides of single policy fields (``clock``, ``rel_se``, ...), also the
            older keywords ``warmup``, ``min_iters``, ``max_iters``, ``min_time_s``,
            ``max_time_s``, ``target_cv``.

    Returns:
        Measurement with ``method="measured"``, ``runtime="onnxruntime"``.
    """
    policy = resolve_timing(timing, DEFAULT_TIMING, **timing_kw)
    _check_kw(threads, precision, policy)
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"ONNX file not found: {path}")
    sess = make_session(path, threads)
    feed, spec = _feed_for(sess, input_spec)
    result = _time_session(sess, feed, policy)
    return _measurement(result, spec, threads, {"onnx_sha256": file_sha256(path)}, policy.clock)


def onnx_file_io(path: str | Path) -> tuple[list[Any], int]:
    """An ONNX file's graph input dims (ints, or the name of a symbolic dim) and its weights'
    element count (initializers), read without running it; a ``UsageError`` when it is no ONNX."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 (any parse failure: not an ONNX model)
        raise UsageError(f"{path} is not a readable ONNX model ({type(exc).__name__})") from None
    weights = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in weights]
    if len(inputs) != 1:
        raise UsageError(f"{path}: profile supports ONNX models with one input, this one has {len(inputs)}")
    shape = inputs[0].type.tensor_type.shape.dim
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in shape]
    params = sum(int(np.prod(i.dims)) if len(i.dims) else 1 for i in model.graph.initializer)
    return dims, params


def _measurement(
    result: TimingResult,
    spec: InputSpec,
    threads: int | None,
    extra: dict[str, Any],
    clock: str,
    provider: str = "cpu",
    precision: str = "fp32",
) -> Measurement:
    ort = lazy_import("onnxruntime", ORT_HINT)
    if provider != "cpu":
        from .devices import cuda_device

        device = cuda_device()
    else:
        device = cpu_device()
    return measurement_from_timing(
        result,
        device=device,
        # TensorRT's engines run the graph on the TensorRT provider: a TensorRT measurement
        runtime="tensorrt" if provider == "tensorrt" else "onnxruntime",
        precision=precision,
        batch=spec.batch,
        threads=physical_cores() if threads is None else threads,
        extra={
            "onnxruntime_version": ort.__version__,
            "provider": PROVIDERS[provider],
            "graph_optimization": "ORT_ENABLE_ALL",
            "intra_op_num_threads_setting": 0 if threads is None else threads,
            "timer": CLOCK_TIMERS[clock],
            "clock": clock,
            **extra,
        },
    )


@register_profiler("onnxruntime")
class OnnxRuntimeProfiler(Profiler):
    """Measured latency with ONNX Runtime, on the CPU or (onnxruntime-gpu) a CUDA GPU.

    Args:
        provider: execution provider: ``cpu`` (default), ``cuda`` or ``tensorrt``.
        threads: intra-op threads (``None``: ONNX Runtime's default, one per physical core).
        precision: ``fp32``; or ``fp16`` on a GPU provider (module docstring).
        opset: ONNX opset for the export.
        cache_dir: where exported files are kept; a private temporary folder (removed by
            ``close``) when ``None``.
        timing: the timing policy (``DEFAULT_TIMING`` when ``None``; ``TimingPolicy.fast()``
            for a quick number); its clock ``"cpu"`` needs ``threads=1``, see ``profile_onnx``.
        **timing_kw: overrides of single policy fields (``clock``, ``rel_se``, ...), also the
            older keywords ``warmup``, ``min_iters``, ``max_iters``, ``min_time_s``,
            ``max_time_s``, ``target_cv``.
    """

    name = "onnxruntime"

    def __init__(
        self,
        threads: int | None = None,
        precision: str = "fp32",
        opset: int = 17,
        cache_dir: str | Path | None = None,
        *,
        provider: str = "cpu",
        timing: TimingPolicy | None = None,
        **timing_kw: Any,
    ) -> None:
        self.timing = resolve_timing(timing, DEFAULT_TIMING, **timing_kw)
        if provider not in PROVIDERS:
            raise UsageError(f"unknown ONNX Runtime provider '{provider}' ({', '.join(PROVIDERS)})")
        _check_kw(threads, precision, self.timing, provider)
        self.provider = provider
        self.threads = threads
        self.precision = precision
        self.opset = opset
        self._dir = WorkDir(cache_dir, "kd-ort-")
        self.cache_dir = self._dir.path
        # ONNX sha256 -> session: a re-profiled model reuses its optimised session
        self._sessions: dict[str, Any] = {}

    def _impl(self, model: nn.Module, input_spec: InputSpec) -> Measurement:
        loader = OnnxFromModule(model, input_spec, cache_dir=self.cache_dir, opset=self.opset)
        path = loader()
        assert loader.info is not None
        sha = loader.info.sha256
        fp16 = self.precision == "fp16"
        sess = self._sessions.get(sha)
        if sess is None:
            run_path = to_fp16(path) if fp16 else path  # fp16 only on a GPU provider (_check_kw)
            sess = self._sessions[sha] = make_session(run_path, self.threads, self.provider, fp16=fp16)
        feed, spec = _feed_for(sess, input_spec)
        result = _time_session(sess, feed, self.timing, self.provider)
        return _measurement(
            result,
            spec,
            self.threads,
            {
                "onnx_sha256": sha,
                "opset": loader.info.opset,
                "onnx_simplified": loader.info.simplified,
            },
            self.timing.clock,
            self.provider,
            self.precision,
        )

    def close(self) -> None:
        """Drop the sessions and remove the private export folder, if any. Idempotent."""
        self._sessions.clear()
        self._dir.close()


__all__ = [
    "DEFAULT_TIMING",
    "PROVIDERS",
    "OnnxRuntimeProfiler",
    "available_providers",
    "make_session",
    "physical_cores",
    "profile_onnx",
    "to_fp16",
    "trt_provider_options",
]
