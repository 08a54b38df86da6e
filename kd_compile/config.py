"""Configuration dataclasses and the parsers for human-written sizes and durations."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UsageError

_SIZE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([kKmMgGtT]?)\s*$")
_SIZE_MULT = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}

_TIME_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ns|us|µs|ms|s)?\s*$")
_TIME_TO_MS = {"ns": 1e-6, "us": 1e-3, "µs": 1e-3, "ms": 1.0, "s": 1e3, None: 1.0}

_BYTES_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kKmMgGtT]?)(i?)[bB]?\s*$")


def parse_size(text: str | int | float, what: str = "size") -> int:
    """Parse a count such as ``4M``, ``600K``, ``1.2G`` or ``123456`` into an int.

    Raises:
        UsageError: if the text is not a positive count.
    """
    if isinstance(text, bool):
        raise UsageError(f"invalid {what} {text!r}")
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        m = _SIZE_RE.match(str(text))
        if not m:
            raise UsageError(f"invalid {what} {text!r}: expected a number with an optional K/M/G suffix, e.g. 4M")
        value = float(m.group(1)) * _SIZE_MULT[m.group(2).lower()]
    if not math.isfinite(value) or value <= 0:
        raise UsageError(f"invalid {what} {text!r}: must be positive")
    return int(round(value))


def parse_latency_ms(text: str | int | float, what: str = "latency") -> float:
    """Parse a duration such as ``2ms``, ``500us``, ``0.01s`` (bare numbers are ms) into ms."""
    if isinstance(text, bool):
        raise UsageError(f"invalid {what} {text!r}")
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        m = _TIME_RE.match(str(text))
        if not m:
            raise UsageError(f"invalid {what} {text!r}: expected a duration such as 2ms, 500us or 0.01s")
        value = float(m.group(1)) * _TIME_TO_MS[m.group(2)]
    if not math.isfinite(value) or value <= 0:
        raise UsageError(f"invalid {what} {text!r}: must be positive")
    return value


def parse_bytes(text: str | int | float, what: str = "memory") -> int:
    """Parse a byte size such as ``64MB``, ``1.5GiB`` or ``4M`` (decimal unless ``i``)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return parse_size(text, what)
    m = _BYTES_RE.match(str(text))
    if not m:
        raise UsageError(f"invalid {what} {text!r}: expected e.g. 64MB or 1.5GiB")
    base = 1024 if m.group(3) else 1000
    exp = " kmgt".index(m.group(2).lower() or " ")
    value = float(m.group(1)) * base**exp
    if value <= 0:
        raise UsageError(f"invalid {what} {text!r}: must be positive")
    return int(round(value))


def format_count(n: float) -> str:
    """Human form of a count: 4.12M, 600K, 1.2G."""
    for div, suf in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.3g}{suf}"
    return f"{n:.3g}"


@dataclass(frozen=True)
class Constraints:
    """Hard limits checked on the built, untrained student. ``None`` means no limit."""

    max_params: int | None = None
    max_flops: int | None = None
    max_latency_ms: float | None = None
    max_memory_bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Constraints:
        return cls(**{k: d.get(k) for k in ("max_params", "max_flops", "max_latency_ms", "max_memory_bytes")})

    def violations(self, params: int, flops: int, latency_ms: float | None, memory_bytes: int | None) -> list[str]:
        """Return human-readable violations (empty when feasible)."""
        out: list[str] = []
        if self.max_params is not None and params > self.max_params:
            out.append(f"params {format_count(params)} > {format_count(self.max_params)}")
        if self.max_flops is not None and flops > self.max_flops:
            out.append(f"FLOPs {format_count(flops)} > {format_count(self.max_flops)}")
        if self.max_latency_ms is not None and latency_ms is not None and latency_ms > self.max_latency_ms:
            out.append(f"latency {latency_ms:.3g}ms > {self.max_latency_ms:.3g}ms")
        if self.max_memory_bytes is not None and memory_bytes is not None and memory_bytes > self.max_memory_bytes:
            out.append(f"memory {format_count(memory_bytes)}B > {format_count(self.max_memory_bytes)}B")
        return out


@dataclass(frozen=True)
class Budget:
    """How much work the search may do.

    Attributes:
        candidates: training budget of the search, in full proxy trainings: a candidate trained at
            fidelity f (multi-fidelity strategies) uses f of it.
        proxy_epochs: epochs of KD training for each candidate (low fidelity).
        proxy_data_fraction: share of the training set used for each candidate.
        final_epochs: epochs of KD training for the chosen student.
        time_limit_s: optional wall-clock limit for the search phase.
        lr: peak AdamW learning rate of every training (warm-up, then cosine decay).
        proxy_sparsity: candidates train with this fraction of their weights zero (dynamic
            sparse training, Auto-KD's proxy acceleration); 0 = dense.
        proxy_patience: candidates stop early after this many epochs without a val-accuracy
            gain (None = train the full proxy epochs).
    """

    candidates: int = 8
    proxy_epochs: float = 2.0
    proxy_data_fraction: float = 1.0
    final_epochs: float = 15.0
    time_limit_s: float | None = None
    lr: float = 1e-2
    proxy_sparsity: float = 0.0
    proxy_patience: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class CompileConfig:
    """Everything ``kd_compile.compile`` needs; the CLI builds one of these."""

    teacher: str
    target: str = "2080ti"
    constraints: Constraints = field(default_factory=Constraints)
    data: str | None = None
    strategy: str = "turbo"
    space: str = "trade"
    budget: Budget = field(default_factory=Budget)
    target_acc: float | None = None
    out: Path = Path("kd-out")
    seed: int = 0
    device: str = "cpu"
    resume: bool = False
    force: bool = False
    trust_checkpoint: bool = False
    arch: str | None = None
    input_shape: tuple[int, int, int] | None = None
    num_classes: int | None = None
    image_size: int | None = None
    compare_ce: bool = True
    batch_size: int = 128
    workers: int = 0
    distiller: str = "kd"
    distiller_iterations: int = 8
    synthetic_images: int = 2048
    synthetic_steps: int = 200
    augment_views: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["out"] = str(self.out)
        return d
