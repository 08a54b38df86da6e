"""TensorRT via the ``trtexec`` tool: command line, JSON export parsing, the ``"trtexec"`` profiler.

``build_trtexec_command`` makes one build-and-time argument list; ``parse_trtexec_times`` /
``parse_trtexec_profile`` / ``parse_trtexec_layer_info`` read its ``--exportTimes`` /
``--exportProfile`` / ``--exportLayerInfo`` JSON files. ``TrtexecProfiler`` (``"trtexec"``)
shells out to ``trtexec``: the tool runs its own timing loop (``warmup_ms``, ``duration_s``,
``iterations``), so it takes no ``TimingPolicy``; its per-iteration compute times go through the
shared statistics of :mod:`..timing` (``latency_stats``, ``measurement_from_timing``).
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ...errors import BackendUnavailableError, ExportError, UsageError
from ...paths import private_dir
from ..base import InputSpec, LayerCost, Measurement, Profiler, register_profiler
from ..devices import cuda_device
from ..onnx_export import OnnxFromModule
from ..timing import TimingResult, latency_stats, measurement_from_timing
from ..workdir import WorkDir
from .engine import check_precision
from .precision import QDQ_HINT, strongly_typed_onnx, trtexec_weakly_typed

TRTEXEC_HINT = "install TensorRT 10 or 11 and put its bin/ folder (with trtexec) on PATH"


def build_trtexec_command(
    trtexec: str,
    onnx_path: str | Path,
    *,
    input_name: str,
    input_shape: Sequence[int],
    precision: str = "fp16",
    times_path: str | Path | None = None,
    profile_path: str | Path | None = None,
    layer_info_path: str | Path | None = None,
    warmup_ms: int = 200,
    duration_s: float = 3.0,
    iterations: int | None = None,
    use_cuda_graph: bool = False,
    opt_level: int | None = None,
    workspace_mib: int | None = None,
    timing_cache_path: str | Path | None = None,
    calibration_cache: str | Path | None = None,
    weakly_typed: bool = True,
) -> list[str]:
    """The ``trtexec`` argument list for one build-and-time run.

    GPU compute is timed without host/device copies (``--noDataTransfers``), like the
    ``tensorrt`` profiler; layer times come from a separate profiled run
    (``--separateProfileRun``) so that profiling does not perturb the end-to-end times.

    Args:
        trtexec: the executable.
        onnx_path: model file.
        input_name: name of the (single) input.
        input_shape: full input shape ``(N, C, H, W)`` (sets a static optimisation profile).
        precision: fp32/fp16/bf16/int8 (int8 needs ``calibration_cache``).
        times_path, profile_path, layer_info_path: JSON exports (``--exportTimes``,
            ``--exportProfile``, ``--exportLayerInfo``).
        warmup_ms: ``--warmUp`` milliseconds.
        duration_s: ``--duration`` seconds (minimum timed duration).
        iterations: ``--iterations`` (minimum timed iterations).
        use_cuda_graph: ``--useCudaGraph``.
        opt_level: ``--builderOptimizationLevel``.
        workspace_mib: ``--memPoolSize=workspace:<N>MiB``.
        timing_cache_path: ``--timingCacheFile``.
        calibration_cache: ``--calib`` for int8.
        weakly_typed: the ``trtexec`` takes precision flags (TensorRT 10). ``False`` (TensorRT 11,
            where every network is strongly typed): no precision flag at all, ``onnx_path`` must
            already be in ``precision`` (``precision.strongly_typed_onnx``), and int8 takes no
            calibration cache.

    Returns:
        argv list for ``subprocess.run``.
    """
    check_precision(precision, "trtexec")
    if not weakly_typed and calibration_cache is not None:
        raise UsageError("trtexec of TensorRT 11 has no int8 calibration (--calib)", hint=QDQ_HINT)
    if weakly_typed and precision == "int8" and calibration_cache is None:
        raise UsageError(
            "trtexec int8 needs a calibration cache (uncalibrated int8 gives meaningless accuracy)",
            hint="pass calibration_cache=<file> or use precision='fp16'",
        )
    shape = "x".join(str(int(d)) for d in input_shape)
    cmd = [trtexec, f"--onnx={onnx_path}", f"--shapes={input_name}:{shape}"]
    # TensorRT 11 removed --fp16/--bf16/--int8/--calib/--best: there the ONNX's types are the precision
    if weakly_typed:
        cmd += {"fp16": ["--fp16"], "bf16": ["--bf16"],
                "int8": ["--int8", "--fp16", f"--calib={calibration_cache}"]}.get(precision, [])
    if opt_level is not None:
        cmd.append(f"--builderOptimizationLevel={int(opt_level)}")
    if workspace_mib is not None:
        cmd.append(f"--memPoolSize=workspace:{int(workspace_mib)}MiB")
    if timing_cache_path is not None:
        cmd.append(f"--timingCacheFile={timing_cache_path}")
    cmd += [f"--warmUp={int(warmup_ms)}", f"--duration={duration_s:g}"]
    if iterations is not None:
        cmd.append(f"--iterations={int(iterations)}")
    cmd += ["--noDataTransfers", "--useSpinWait"]
    if use_cuda_graph:
        cmd.append("--useCudaGraph")
    if times_path is not None:
        cmd.append(f"--exportTimes={times_path}")
    if profile_path is not None or layer_info_path is not None:
        cmd += ["--profilingVerbosity=detailed", "--separateProfileRun"]
    if profile_path is not None:
        cmd.append(f"--exportProfile={profile_path}")
    if layer_info_path is not None:
        cmd.append(f"--exportLayerInfo={layer_info_path}")
    return cmd


def _load_json(data: str | Path | Any) -> Any:
    if isinstance(data, Path) or (
        isinstance(data, str) and not data.lstrip().startswith(("[", "{"))
    ):
        return json.loads(Path(data).read_text(encoding="utf-8"))
    if isinstance(data, str):
        return json.loads(data)
    return data


def parse_trtexec_times(data: str | Path | list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Per-iteration times from a ``--exportTimes`` file.

    The file is a JSON list with one object per timed inference, with keys ``startEnqMs``,
    ``endEnqMs``, ``startH2dMs``, ``endH2dMs``, ``startComputeMs``, ``endComputeMs``,
    ``startD2hMs``, ``endD2hMs``, ``h2dMs``, ``computeMs``, ``d2hMs``, ``latencyMs`` (all ms).

    Args:
        data: path, JSON text, or the parsed list.

    Returns:
        ``{"compute_ms": ..., "latency_ms": ..., "enqueue_ms": ...}`` arrays, one value per
        iteration (``enqueue_ms`` empty where the keys are absent).
    """
    rows = _load_json(data)
    if not isinstance(rows, list) or not rows:
        raise ExportError("trtexec times export is not a non-empty JSON list")
    compute, latency, enqueue = [], [], []
    for r in rows:
        if not isinstance(r, dict):
            raise ExportError(f"trtexec times entry is not an object: {r!r}")
        if "computeMs" in r:
            compute.append(float(r["computeMs"]))
        elif "startComputeMs" in r and "endComputeMs" in r:
            compute.append(float(r["endComputeMs"]) - float(r["startComputeMs"]))
        else:
            raise ExportError("trtexec times entry has no computeMs/startComputeMs/endComputeMs")
        latency.append(float(r.get("latencyMs", compute[-1])))
        if "startEnqMs" in r and "endEnqMs" in r:
            enqueue.append(float(r["endEnqMs"]) - float(r["startEnqMs"]))
    return {
        "compute_ms": np.asarray(compute),
        "latency_ms": np.asarray(latency),
        "enqueue_ms": np.asarray(enqueue),
    }


def parse_trtexec_profile(
    data: str | Path | list[Any], layer_types: dict[str, str] | None = None
) -> tuple[int, tuple[LayerCost, ...]]:
    """Per-layer times from a ``--exportProfile`` file.

    The file is a JSON list: first ``{"count": N}`` (profiled iterations), then one object
    per layer with ``name``, ``timeMs`` (total), ``averageMs``, ``medianMs`` (newer versions)
    and ``percentage``.

    Args:
        data: path, JSON text, or the parsed list.
        layer_types: optional layer name -> type map (from ``parse_trtexec_layer_info``).

    Returns:
        ``(count, layers)`` with ``LayerCost.latency_ms`` the per-iteration average.
    """
    rows = _load_json(data)
    if (
        not isinstance(rows, list)
        or not rows
        or not isinstance(rows[0], dict)
        or "count" not in rows[0]
    ):
        raise ExportError('trtexec profile export must be a JSON list starting with {"count": N}')
    count = int(rows[0]["count"])
    types = layer_types or {}
    layers = []
    for r in rows[1:]:
        if not isinstance(r, dict) or "name" not in r:
            raise ExportError(f"trtexec profile entry without a name: {r!r}")
        if "averageMs" in r:
            avg = float(r["averageMs"])
        elif "timeMs" in r and count:
            avg = float(r["timeMs"]) / count
        else:
            raise ExportError(f"trtexec profile entry '{r['name']}' has no averageMs/timeMs")
        layers.append(
            LayerCost(name=str(r["name"]), op=types.get(str(r["name"]), ""), latency_ms=avg)
        )
    return count, tuple(layers)


def parse_trtexec_layer_info(data: str | Path | dict[str, Any]) -> dict[str, str]:
    """Layer name -> LayerType from a ``--exportLayerInfo`` file (engine inspector JSON)."""
    doc = _load_json(data)
    layers = doc.get("Layers", []) if isinstance(doc, dict) else []
    return {
        str(d.get("Name", "")): str(d.get("LayerType", "")) for d in layers if isinstance(d, dict)
    }


_DEVICE_RE = re.compile(r"Selected Device:\s*(.+)")
_VERSION_RE = re.compile(r"TensorRT version:\s*([0-9.]+)")


@register_profiler("trtexec")
class TrtexecProfiler(Profiler):
    """Measured TensorRT latency via the ``trtexec`` command-line tool.

    Args:
        precision: fp32/fp16/bf16/int8 (int8 needs ``calibration_cache``).
        trtexec: path of the executable; found on PATH when ``None``.
        warmup_ms, duration_s, iterations, use_cuda_graph, opt_level, workspace_mib,
            calibration_cache: see ``build_trtexec_command``.
        cache_dir: ONNX/export folder (private temporary folder when ``None``).
        timeout_s: limit for one trtexec run (it builds the engine too).
    """

    name = "trtexec"

    def __init__(
        self,
        precision: str = "fp16",
        trtexec: str | None = None,
        warmup_ms: int = 200,
        duration_s: float = 3.0,
        iterations: int | None = None,
        use_cuda_graph: bool = False,
        opt_level: int | None = None,
        workspace_mib: int | None = None,
        calibration_cache: str | Path | None = None,
        cache_dir: str | Path | None = None,
        timeout_s: float = 1800.0,
    ) -> None:
        check_precision(precision, "trtexec")
        self.precision = precision
        self.trtexec = trtexec
        self.kw: dict[str, Any] = dict(
            warmup_ms=warmup_ms,
            duration_s=duration_s,
            iterations=iterations,
            use_cuda_graph=use_cuda_graph,
            opt_level=opt_level,
            workspace_mib=workspace_mib,
            calibration_cache=calibration_cache,
        )
        self._dir = WorkDir(cache_dir, "kd-trtexec-")
        self.cache_dir = self._dir.path
        self.timeout_s = timeout_s
        self._typing: dict[str, bool] = {}  # trtexec path -> takes precision flags

    def _exe(self) -> str:
        exe = self.trtexec or shutil.which("trtexec")
        if not exe or not Path(exe).exists():
            raise BackendUnavailableError("trtexec was not found on PATH", hint=TRTEXEC_HINT)
        return exe

    def _weakly_typed(self, exe: str) -> bool:
        """Whether this ``trtexec`` takes precision flags: its ``--help`` lists ``--fp16`` (TensorRT 10)."""
        if exe not in self._typing:
            try:
                proc = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120, check=False)
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise ExportError(f"trtexec --help failed: {exc}") from None
            self._typing[exe] = trtexec_weakly_typed(proc.stdout + proc.stderr)
        return self._typing[exe]

    def _run(self, cmd: list[str]) -> str:
        """Run ``cmd``; return its log (stdout + stderr) or raise ExportError."""
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=self.timeout_s, check=False)
        except subprocess.TimeoutExpired:
            raise ExportError(f"trtexec did not finish within {self.timeout_s:g} s") from None
        log = proc.stdout + proc.stderr
        if proc.returncode != 0:
            tail = " | ".join(log.strip().splitlines()[-5:])
            raise ExportError(f"trtexec failed (exit {proc.returncode}): {tail}")
        return log

    def _impl(self, model: nn.Module, input_spec: InputSpec) -> Measurement:
        exe = self._exe()
        loader = OnnxFromModule(model, input_spec, cache_dir=self.cache_dir / "onnx")
        onnx_path = loader()
        assert loader.info is not None
        weak = self._weakly_typed(exe)
        if not weak:
            onnx_path, _ = strongly_typed_onnx(onnx_path, self.precision, self.cache_dir / "typed")
        run_dir = private_dir("kd-trtexec-run-")  # this run's JSON exports, removed below
        try:
            times, prof, info = run_dir / "times.json", run_dir / "profile.json", run_dir / "layers.json"
            cmd = build_trtexec_command(
                exe,
                onnx_path,
                input_name=loader.info.input_name,
                input_shape=(input_spec.batch, *input_spec.shape),
                precision=self.precision,
                times_path=times,
                profile_path=prof,
                layer_info_path=info,
                timing_cache_path=self.cache_dir / "timing.cache",
                weakly_typed=weak,
                **self.kw,
            )
            log = self._run(cmd)
            # the device must be a real GPU: take torch's view when it has one, else trtexec's
            dev_match = _DEVICE_RE.search(log)
            if torch.cuda.is_available():
                device = cuda_device()
            elif dev_match:
                device = f"cuda:{dev_match.group(1).strip()}"
            else:
                raise BackendUnavailableError(
                    "trtexec ran but reported no GPU ('Selected Device' missing) and torch sees none; "
                    "refusing to report a measured latency",
                    hint=TRTEXEC_HINT,
                )
            t = parse_trtexec_times(times)
            types = parse_trtexec_layer_info(info) if info.is_file() else {}
            layers: tuple[LayerCost, ...] = ()
            if prof.is_file():
                _, layers = parse_trtexec_profile(prof, types)
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)
        samples = t["compute_ms"]
        result = TimingResult(
            tuple(float(v) for v in samples), "trtexec", float(self.kw["duration_s"]), 0, latency_stats(samples)
        )
        ver = _VERSION_RE.search(log)
        m = measurement_from_timing(
            result,
            device=device,
            runtime="tensorrt",
            precision=self.precision,
            batch=input_spec.batch,
            threads=None,
            extra={
                "tool": "trtexec",
                "command": cmd,
                "trt_version": ver.group(1) if ver else None,
                "latency_p50_ms_incl_transfers": float(np.median(t["latency_ms"])),
                "onnx_sha256": loader.info.sha256,
                "timer": "trtexec --exportTimes computeMs",
            },
        )
        return dataclasses.replace(m, layers=layers)

    def close(self) -> None:
        """Remove the private cache folder (ONNX, timing cache), if any. Idempotent."""
        self._dir.close()


__all__ = [
    "TRTEXEC_HINT",
    "TrtexecProfiler",
    "build_trtexec_command",
    "parse_trtexec_layer_info",
    "parse_trtexec_profile",
    "parse_trtexec_times",
]
