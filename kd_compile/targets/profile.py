"""Target device profiles: TOML files as data, validated into a frozen dataclass.

A profile describes one deployment device: peak throughput per precision (TFLOP/s or TOP/s),
memory bandwidth and size, compute units, per-kernel launch overhead, the default runtime and
precision, and the sources the numbers come from. Users add a device by writing a TOML file
(``--target path/to/device.toml``); no code is needed.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import TargetError

KINDS = ("gpu", "cpu", "edge-gpu")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
RUNTIMES = ("tensorrt", "torch", "onnxruntime")
# what a profile that names no default runtime/precision deploys with, by kind: as the shipped
# profiles of that kind do (TensorRT fp16 on NVIDIA GPUs and Jetsons, ONNX Runtime fp32 on CPUs)
KIND_DEFAULTS = {"gpu": ("tensorrt", "fp16"), "edge-gpu": ("tensorrt", "fp16"), "cpu": ("onnxruntime", "fp32")}
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
PEAK_KEYS = ("fp32", "fp16", "fp16_tensor", "bf16_tensor", "tf32_tensor", "int8_tensor")
_MAX_TOML_BYTES = 1 << 20
# upper bounds far above any device, so that a typo (or a hostile file) cannot make every
# predicted latency zero; numbers are also required to be finite
_LIMITS = {
    "peak_tflops": 1e6,
    "memory_bandwidth_gbs": 1e6,
    "memory_gb": 1e6,
    "compute_units": 1e7,
    "launch_overhead_us": 1e6,
    "boost_clock_mhz": 1e5,
    "tdp_w": 1e5,
    "process_nm": 1e3,
}


@dataclass(frozen=True)
class TargetProfile:
    """One device.

    Attributes:
        name: registry name (``2080ti``).
        display_name: human name (``NVIDIA GeForce RTX 2080 Ti``).
        kind: ``gpu``, ``edge-gpu`` or ``cpu``.
        peak_tflops: peak dense throughput per precision key (see ``PEAK_KEYS``); int8 in TOP/s.
        memory_bandwidth_gbs: DRAM bandwidth, GB/s.
        memory_gb: device memory, GB.
        compute_units: SMs for GPUs, cores for CPUs.
        launch_overhead_us: optional override of the fitted fixed GPU cost per kernel,
            microseconds; 0 (the default) uses the calibrated per-runtime constant.
        default_runtime: runtime used when none is asked for.
        default_precision: precision used when none is asked for.
        local: the device is this machine (latency can be measured, not predicted).
        boost_clock_mhz: GPU boost clock (datasheet), MHz; 0 when not given. The predictor's
            fixed GPU cost per kernel is a number of cycles at this clock (``roofline``).
        tdp_w: the board's power limit (datasheet TDP/TGP, or the module's power mode on a
            Jetson), watts; 0 when not given. The predictor caps tensor-core throughput at a
            fitted number of FLOPs per joule times this (``roofline``); 0: no cap.
        process_nm: the GPU die's process node as its foundry names it (TSMC ``12FFN``: 12, ``4N``:
            4), nm; 0 when not given. The power cap's FLOPs per joule are those of a 12-nm board
            times ``(12 / process_nm) ** node_beta`` (``roofline``); 0: 12-nm efficiency.
        sources: citations for the numbers (datasheets, whitepapers).
        calibration: efficiency factors fitted by ``kd-compile calibrate``, keyed by
            ``runtime/precision``; each value holds the fitted constants and the file they were
            fitted on.
    """

    name: str
    display_name: str
    kind: str
    peak_tflops: dict[str, float]
    memory_bandwidth_gbs: float
    memory_gb: float
    compute_units: int
    launch_overhead_us: float
    default_runtime: str
    default_precision: str
    local: bool = False
    boost_clock_mhz: float = 0.0
    tdp_w: float = 0.0
    process_nm: float = 0.0
    sources: tuple[str, ...] = ()
    calibration: dict[str, dict[str, Any]] = field(default_factory=dict)
    path: str | None = None

    def peak_for(self, precision: str, tensor_cores: bool = True) -> float:
        """Peak TFLOP/s (TOP/s for int8) for a precision, falling back sensibly."""
        p = self.peak_tflops
        if precision == "fp32":
            return p["fp32"]
        if precision in ("fp16", "bf16"):
            key = f"{precision}_tensor"
            if tensor_cores and p.get(key):
                return p[key]
            if tensor_cores and p.get("fp16_tensor"):
                return p["fp16_tensor"]
            return p.get("fp16") or p["fp32"]
        if precision == "int8":
            return p.get("int8_tensor") or self.peak_for("fp16", tensor_cores)
        raise TargetError(f"unknown precision '{precision}' (known: {', '.join(PRECISIONS)})")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["sources"] = list(self.sources)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "<dict>") -> TargetProfile:
        return _validate(d, where)


def _validate(d: dict[str, Any], where: str) -> TargetProfile:
    def need(key: str, typ: type | tuple[type, ...]) -> Any:
        if key not in d:
            raise TargetError(f"{where}: missing field '{key}'")
        v = d[key]
        if not isinstance(v, typ) or isinstance(v, bool):
            raise TargetError(f"{where}: field '{key}' must be {_tname(typ)}, got {v!r}")
        return v

    def positive(key: str, v: float) -> float:
        if not (_finite(v) and v > 0):
            raise TargetError(f"{where}: field '{key}' must be a positive finite number, got {v!r}")
        if v > _LIMITS[key]:
            raise TargetError(f"{where}: field '{key}' is {v!r}, above the plausible maximum {_LIMITS[key]:g}")
        return float(v)

    known = {f.name for f in dataclasses.fields(TargetProfile)}
    unknown = sorted(set(d) - known)
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(known), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise TargetError(f"{where}: unknown field '{unknown[0]}'{hint}")
    name = need("name", str)
    if not _NAME_RE.fullmatch(name):
        # a target's name becomes file names (calibration/<name>.json): it may never be a path
        raise TargetError(f"{where}: name must be letters, digits, '.', '_' or '-' (no path), got {name!r}")
    kind = need("kind", str)
    if kind not in KINDS:
        raise TargetError(f"{where}: kind must be one of {', '.join(KINDS)}, got '{kind}'")
    peaks = need("peak_tflops", dict)
    if "fp32" not in peaks:
        raise TargetError(f"{where}: peak_tflops needs at least 'fp32'")
    clean_peaks: dict[str, float] = {}
    for k, v in peaks.items():
        if k not in PEAK_KEYS:
            raise TargetError(f"{where}: peak_tflops has unknown key '{k}' (known: {', '.join(PEAK_KEYS)})")
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not (_finite(v) and 0 < v):
            raise TargetError(f"{where}: peak_tflops.{k} must be a positive finite number, got {v!r}")
        if v > _LIMITS["peak_tflops"]:
            raise TargetError(f"{where}: peak_tflops.{k} is {v!r}, above the plausible maximum 1e+06")
        clean_peaks[k] = float(v)
    d = {**dict(zip(("default_runtime", "default_precision"), KIND_DEFAULTS[kind], strict=True)), **d}
    runtime = need("default_runtime", str)
    if runtime not in RUNTIMES:
        raise TargetError(f"{where}: default_runtime must be one of {', '.join(RUNTIMES)}, got '{runtime}'")
    precision = need("default_precision", str)
    if precision not in PRECISIONS:
        raise TargetError(
            f"{where}: default_precision must be one of {', '.join(PRECISIONS)}, got '{precision}'"
        )
    sources = d.get("sources", [])
    if not isinstance(sources, list) or not all(isinstance(s, str) for s in sources):
        raise TargetError(f"{where}: sources must be a list of strings")
    calibration = d.get("calibration", {})
    if not isinstance(calibration, dict):
        raise TargetError(f"{where}: calibration must be a table")
    display_name = d.get("display_name", name)
    if not isinstance(display_name, str):
        raise TargetError(f"{where}: field 'display_name' must be a string, got {display_name!r}")
    local = d.get("local", False)
    if not isinstance(local, bool):
        raise TargetError(f"{where}: field 'local' must be true or false, got {local!r}")
    path = d.get("path")
    if path is not None and not isinstance(path, str):
        raise TargetError(f"{where}: field 'path' must be a string, got {path!r}")
    return TargetProfile(
        name=name,
        display_name=display_name,
        kind=kind,
        peak_tflops=clean_peaks,
        memory_bandwidth_gbs=positive("memory_bandwidth_gbs", need("memory_bandwidth_gbs", (int, float))),
        memory_gb=positive("memory_gb", need("memory_gb", (int, float))),
        compute_units=int(positive("compute_units", need("compute_units", int))),
        launch_overhead_us=_nonneg(where, "launch_overhead_us", d.get("launch_overhead_us", 0.0)),
        default_runtime=runtime,
        default_precision=precision,
        local=local,
        boost_clock_mhz=_nonneg(where, "boost_clock_mhz", d.get("boost_clock_mhz", 0.0)),
        tdp_w=_nonneg(where, "tdp_w", d.get("tdp_w", 0.0)),
        process_nm=_nonneg(where, "process_nm", d.get("process_nm", 0.0)),
        sources=tuple(sources),
        calibration=calibration,
        path=path,
    )


def _finite(v: float) -> bool:
    try:
        return math.isfinite(v)
    except OverflowError:  # an integer beyond float range
        return False


def _nonneg(where: str, key: str, v: Any) -> float:
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not (_finite(v) and v >= 0):
        raise TargetError(f"{where}: field '{key}' must be a non-negative finite number, got {v!r}")
    if v > _LIMITS[key]:
        raise TargetError(f"{where}: field '{key}' is {v!r}, above the plausible maximum {_LIMITS[key]:g}")
    return float(v)


def _tname(t: type | tuple[type, ...]) -> str:
    if isinstance(t, tuple):
        return " or ".join(x.__name__ for x in t)
    return {"str": "a string", "dict": "a table", "int": "an integer"}.get(t.__name__, t.__name__)


def load_target_file(path: str | Path) -> TargetProfile:
    """Load and validate a device profile from a TOML file."""
    p = Path(path)
    if not p.is_file():
        raise TargetError(f"target file {'is not a regular file' if p.exists() else 'not found'}: {p}")
    try:
        if p.stat().st_size > _MAX_TOML_BYTES:
            raise TargetError(f"{p}: {p.stat().st_size} bytes is too large for a device profile")
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError) as exc:
        why = str(exc).splitlines()[0] if str(exc) else "too deeply nested"
        raise TargetError(f"{p}: not valid TOML ({why})") from None
    except OSError as exc:
        raise TargetError(f"{p}: cannot read it ({exc.strerror or exc})") from None
    data.setdefault("path", str(p))
    return _validate(data, str(p))


def _builtin_dir() -> Path:
    return Path(str(resources.files("kd_compile.targets")))


def list_targets() -> list[str]:
    """Names of the built-in device profiles (and plugin ones)."""
    from .registry import TARGETS

    names = {p.stem for p in _builtin_dir().glob("*.toml")}
    return sorted(names | set(TARGETS.names()))


def get_target(name_or_path: str | Path) -> TargetProfile:
    """A built-in profile by name, a plugin profile, or a user TOML file by path."""
    from .registry import TARGETS

    s = str(name_or_path)
    if s.endswith(".toml") or "/" in s:
        return load_target_file(s)
    f = _builtin_dir() / f"{s}.toml"
    if f.is_file():
        return load_target_file(f)
    if s in TARGETS:
        prof = TARGETS.create(s)
        return prof if isinstance(prof, TargetProfile) else TargetProfile.from_dict(prof, s)
    close = difflib.get_close_matches(s.lower(), list_targets(), n=3, cutoff=0.4)
    hint = f"did you mean {', '.join(repr(c) for c in close)}?" if close else "see 'kd-compile targets list'"
    raise TargetError(f"unknown target '{s}'", hint=hint)
