"""Latency on the target: measured where the hardware is, predicted where it is not.

``plan_latency(target, method, runtime, precision)`` decides, once per run, how candidates'
latencies are obtained:

* **measure** when the target is this machine — the ``cpu`` target (ONNX Runtime on this CPU),
  a GPU target whose name matches the local CUDA device, or ``--target local`` — in the
  target's runtime and precision: TensorRT when it is importable, else ONNX Runtime with the
  TensorRT execution provider (TensorRT's engines, when its libraries load) or the CUDA one
  (``onnxruntime-gpu``; fp32, or fp16 on the converted graph), else torch with CUDA graphs and CUDA
  events;
* **predict** otherwise, with the calibrated predictor (``roofline``), whose measurements carry
  their error band.

An explicit runtime or precision (``profile --runtime/--precision``) is honoured: measured in
that runtime (``torch``: eager PyTorch, like the predictor's ``torch``) or predicted for it.

``--latency measure|predict|auto`` (``auto``: measure when possible). Measurements are cached
on disk (``cache_dir("latency")``) by (architecture, device, runtime and version, precision,
batch), so a resumed run or a repeated candidate is not timed twice.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .errors import UsageError
from .profilers import InputSpec, Measurement
from .targets import TargetProfile, get_target

__all__ = ["LATENCY_METHODS", "LatencyPlan", "MeasurementCache", "local_target", "plan_latency", "resolve_target"]

LATENCY_METHODS = ("auto", "measure", "predict")


@dataclass(frozen=True)
class LatencyPlan:
    """How a run gets latencies on its target.

    Attributes:
        method: ``measure`` or ``predict``.
        profiler: the registered profiler that produces them.
        options: its options (runtime-specific: provider, precision, CUDA graphs).
        device: what is measured on (``cpu:<model>``, ``cuda:<name>``) or predicted for.
    """

    method: str
    profiler: str
    options: dict[str, Any]
    device: str


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower().replace("nvidia", "").replace("geforce", ""))


def local_gpu_name() -> str | None:
    """The local CUDA device's name, or None without one."""
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def gpu_name_matches(target: TargetProfile, gpu_name: str) -> bool:
    """Whether a CUDA device named ``gpu_name`` (as ``torch.cuda.get_device_name`` gives it) is the
    GPU that ``target`` describes.

    Either the names agree once vendor words and punctuation are dropped, or the target's name is
    one to three consecutive words of the device's name ("NVIDIA H100 80GB HBM3" is ``h100``,
    "Tesla T4" is ``t4``, "NVIDIA GeForce RTX 2080 Ti" is ``2080ti``, "NVIDIA A100-SXM4-40GB" is
    ``a100`` and not ``a10``). A board variant (PCIe or SXM, memory size) is still that GPU: the
    measurement is of the device itself. A Jetson's CUDA name ("Xavier", "Orin") does not tell its
    module apart, so a Jetson target matches only by its full name.
    """
    if target.kind == "cpu" or not gpu_name:
        return False
    if _norm(gpu_name) == _norm(target.display_name):
        return True
    if target.kind != "gpu":
        return False
    words = re.findall(r"[a-z0-9]+", gpu_name.lower())
    key = _norm(target.name)
    return any("".join(words[i : i + n]) == key for n in (1, 2, 3) for i in range(len(words)))


def local_gpu_profile() -> TargetProfile | None:
    """The registered GPU profile that is the local CUDA device (:func:`gpu_name_matches`), or None
    (no GPU here, or none of the profiles is it). ``--target local`` carries no specs to predict
    with; this profile does, so a prediction can be set beside the local measurement."""
    from .targets import list_targets

    gpu = local_gpu_name()
    if gpu is None:
        return None
    for name in list_targets():
        t = get_target(name)
        if gpu_name_matches(t, gpu):
            return t
    return None


def is_local(target: TargetProfile) -> bool:
    """The target is this machine: the local CPU profile, or a GPU named as the local one
    (:func:`gpu_name_matches`)."""
    if target.local:
        return True
    gpu = local_gpu_name()
    return gpu is not None and gpu_name_matches(target, gpu)


def local_target() -> TargetProfile:
    """``--target local``: the local GPU (its name, measured in its runtime) or this CPU."""
    gpu = local_gpu_name()
    if gpu is None:
        return get_target("cpu")
    props = torch.cuda.get_device_properties(0)
    return TargetProfile(
        name="local",
        display_name=gpu,
        kind="gpu",
        peak_tflops={"fp32": 1.0},  # measured, never predicted: the specs are not used
        memory_bandwidth_gbs=1.0,
        memory_gb=round(props.total_memory / 1e9, 1),
        compute_units=int(props.multi_processor_count),
        launch_overhead_us=0.0,
        default_runtime="tensorrt",
        default_precision="fp16",
        local=True,
        sources=(f"torch.cuda.get_device_properties(0) on this machine: {gpu}",),
    )


def resolve_target(name: str) -> TargetProfile:
    """A target by name or TOML path; ``local`` describes this machine."""
    return local_target() if name == "local" else get_target(name)


MEASURING_RUNTIMES = ("tensorrt", "onnxruntime", "torch")


def _gpu_runtime(target: TargetProfile, precision: str) -> tuple[str, dict[str, Any]]:
    """The best measuring runtime available for a local GPU, in the target's preference order."""
    from .profilers.onnxrt import provider_starts

    try:
        import tensorrt  # noqa: F401

        return "tensorrt", {"precision": precision}
    except Exception:  # not installed, or its libraries are missing
        pass
    if precision == "int8":  # neither ORT's CUDA provider nor torch runs an int8 engine
        raise UsageError("int8 is measured with TensorRT only, which does not import here",
                         hint="install TensorRT, measure another precision, or predict int8")
    for provider in ("tensorrt", "cuda"):  # ORT's TensorRT provider runs TensorRT's own engines
        if precision in ("fp32", "fp16") and provider_starts(provider):  # listed *and* able to start
            return "onnxruntime", {"provider": provider, "precision": precision}
    # no deployment runtime here: CUDA graphs stand in for one (no per-op host dispatch)
    return "torch", {"precision": precision, "device": "cuda", "cuda_graphs": True}


def _measuring_options(runtime: str, precision: str, gpu: bool) -> dict[str, Any]:
    """Profiler options of an explicitly requested measuring runtime (``torch`` is eager PyTorch,
    as the predictor's ``torch`` runtime is)."""
    if runtime == "onnxruntime":
        if gpu:
            return {"provider": "cuda", "precision": precision}
        if precision != "fp32":
            hint = "use --runtime torch for a half-precision CPU measurement, or predict it"
            if precision == "int8":
                hint = "predict it (--method predict); kd-compile measures int8 with TensorRT on a GPU only"
            raise UsageError(f"ONNX Runtime on the CPU measures fp32 only, not {precision}", hint=hint)
        return {}
    if runtime == "tensorrt" and not gpu:
        raise UsageError("runtime 'tensorrt' needs a GPU target", hint="use --runtime onnxruntime or torch on a CPU")
    return {"precision": precision, **({"device": "cuda"} if runtime == "torch" and gpu else {})}


def plan_latency(
    target: TargetProfile,
    method: str = "auto",
    runtime: str | None = None,
    precision: str | None = None,
    *,
    flag: str = "--latency",
) -> LatencyPlan:
    """Decide how latencies on ``target`` are obtained (see the module docstring).

    Args:
        target: the device.
        method: ``auto`` | ``measure`` | ``predict`` (None: ``auto``).
        runtime: a runtime to measure or predict in (default: the best available one here when
            measuring a GPU, the target's default otherwise).
        precision: fp32 | fp16 | bf16 | int8 (default: the target's).
        flag: the command-line option ``method`` came from, for error messages.

    Raises:
        UsageError: an unknown method, runtime or precision; ``method="measure"`` for a target
            that is not this machine, or a runtime that cannot measure it.
    """
    from .profilers.roofline import RUNTIME_NAMES
    from .targets.profile import PRECISIONS

    method = method or "auto"
    if method not in LATENCY_METHODS:
        raise UsageError(f"{flag} must be one of {', '.join(LATENCY_METHODS)}, got '{method}'")
    if runtime is not None and runtime not in RUNTIME_NAMES:
        raise UsageError(f"unknown runtime '{runtime}' (known: {', '.join(RUNTIME_NAMES)})")
    if precision is not None and precision not in PRECISIONS:
        raise UsageError(f"unknown precision '{precision}' (known: {', '.join(PRECISIONS)})")
    local = is_local(target)
    if method == "auto" and local and runtime is not None and runtime not in MEASURING_RUNTIMES:
        method = "predict"  # measure when possible: no profiler here runs this runtime (torch.compile)
    if method == "measure" and not local:
        raise UsageError(
            f"cannot measure on '{target.name}' from this machine ({local_gpu_name() or 'no GPU'})",
            hint=f"use {flag} predict (or auto), or run on that device, or --target local",
        )
    if method == "predict" and target.local and target.kind == "gpu":
        # --target local describes this GPU for measuring; its specs are placeholders
        profile = local_gpu_profile()
        if profile is None:
            raise UsageError(
                f"no target profile describes this GPU ({local_gpu_name()}), so it cannot be predicted",
                hint=f"use {flag} measure (or auto) with --target local, or name a target",
            )
        target = profile
    if method == "predict" or not local:
        from .profilers.roofline import check_predictable

        # a runtime or precision the target cannot run is refused now, before any work
        check_predictable(target, runtime or target.default_runtime, precision or target.default_precision)
        given = {k: v for k, v in (("runtime", runtime), ("precision", precision)) if v is not None}
        return LatencyPlan("predict", "roofline", {"target": target, **given}, f"predicted:{target.name}")
    if runtime is not None and runtime not in MEASURING_RUNTIMES:
        raise UsageError(f"runtime '{runtime}' can only be predicted here (measured: {', '.join(MEASURING_RUNTIMES)})",
                         hint=f"use {flag} predict")
    prec = precision or target.default_precision
    if target.kind == "cpu":
        from .profilers.devices import cpu_device

        name = runtime or "onnxruntime"
        return LatencyPlan("measure", name, _measuring_options(name, prec, gpu=False), cpu_device())
    if runtime is None:
        name, opts = _gpu_runtime(target, prec)
    else:
        name, opts = runtime, _measuring_options(runtime, prec, gpu=True)
    return LatencyPlan("measure", name, opts, f"cuda:{local_gpu_name()}")


# ----------------------------------------------------------------------------------------------
# on-disk cache of measurements


def architecture_key(model: nn.Module, spec: InputSpec) -> str:
    """What a latency depends on in the model: its module structure and tensor shapes (not its
    weight values), and the input."""
    h = hashlib.sha256(repr(model).encode())
    for name, t in list(model.state_dict().items()):
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
    h.update(json.dumps(spec.to_dict(), sort_keys=True).encode())
    return h.hexdigest()[:32]


def _runtime_version(profiler: str) -> str:
    mod = {"onnxruntime": "onnxruntime", "tensorrt": "tensorrt", "torch": "torch", "trtexec": "tensorrt"}.get(profiler)
    if mod is None:
        return "-"
    try:
        return str(__import__(mod).__version__)
    except Exception:
        return "?"


class MeasurementCache:
    """Measurements on disk, one JSON file per (architecture, device, runtime+version,
    precision, batch, options). A damaged file is ignored and rewritten.

    Args:
        folder: where to keep them; None: no caching.
    """

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder

    def key(self, plan: LatencyPlan, model: nn.Module, spec: InputSpec, fast: bool) -> str:
        opts = {k: v for k, v in plan.options.items() if k != "target"}
        parts = [
            architecture_key(model, spec),
            plan.device,
            plan.profiler,
            _runtime_version(plan.profiler),
            json.dumps(opts, sort_keys=True, default=str),
            "fast" if fast else "full",
        ]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:40]

    def get(self, key: str) -> Measurement | None:
        if self.folder is None:
            return None
        p = self.folder / f"{key}.json"
        try:
            return Measurement.from_dict(json.loads(p.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError, KeyError):
            return None

    def put(self, key: str, m: Measurement) -> None:
        if self.folder is None:
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = self.folder / f".{key}.{os.getpid()}.tmp"
            tmp.write_text(json.dumps(m.to_dict(layers=False), default=str), encoding="utf-8")
            os.replace(tmp, self.folder / f"{key}.json")
        except OSError:  # a full or read-only disk costs a re-measurement later, nothing more
            pass


def default_cache() -> MeasurementCache:
    from .paths import cache_dir

    return MeasurementCache(cache_dir("latency"))


def measure_or_predict(
    model: nn.Module,
    spec: InputSpec,
    plan: LatencyPlan,
    *,
    fast: bool = False,
    trace: Any = None,
    cache: MeasurementCache | None = None,
) -> Measurement:
    """The latency of ``model`` by ``plan``: predicted (from ``trace`` when given), or measured
    (``fast``: the quick timing policy for candidates), through ``cache``."""
    from .profilers import TimingPolicy, create_profiler

    if plan.method == "predict":
        with create_profiler("roofline", **plan.options) as p:
            if trace is not None:  # (C, H, W): the larger side
                return p.predict_ops(trace.ops, spec.batch, input_px=max(spec.shape[1:]))
            return p.profile(model, spec)
    key = cache.key(plan, model, spec, fast) if cache is not None else None
    if key is not None:
        hit = cache.get(key)  # type: ignore[union-attr]
        if hit is not None:
            return dataclasses.replace(hit, extra={**hit.extra, "cached": True})
    opts = dict(plan.options)
    if fast:
        opts["timing"] = TimingPolicy.fast()
    with create_profiler(plan.profiler, **opts) as p:
        m = p.profile(model, spec)
    if key is not None:
        cache.put(key, m)  # type: ignore[union-attr]
    return m
