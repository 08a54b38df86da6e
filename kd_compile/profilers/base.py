"""Profiler interface and registry: ``InputSpec``, ``Measurement``, ``Profiler``, names.

``profile(model, input_spec) -> Measurement`` checks its input and calls ``_impl``. Heavy
backends import lazily inside ``_impl``/``__enter__`` (``lazy_import``); a missing backend raises
``BackendUnavailableError`` with one line saying how to install it.

Registry, the timm way: a profiler class registers itself with ``@register_profiler("name")``
when its module is imported; ``kd_compile.profilers`` imports every built-in module, so
``create_profiler``/``list_profilers`` see them all. Third-party profilers come in through the
``kd_compile.profilers`` entry-point group.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
import torch.nn as nn

from ..errors import BackendUnavailableError, UsageError
from ..registry import Registry


@dataclass(frozen=True)
class InputSpec:
    """Shape of one input image (C, H, W) plus batch size and dtype name."""

    shape: tuple[int, int, int]
    batch: int = 1
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if len(self.shape) != 3 or any(int(s) <= 0 for s in self.shape):
            raise UsageError(f"input shape must be (C, H, W) with positive sizes, got {self.shape}")
        if self.batch <= 0:
            raise UsageError(f"batch must be positive, got {self.batch}")

    def example(self, device: str | torch.device = "cpu") -> torch.Tensor:
        g = torch.Generator().manual_seed(0)
        x = torch.randn((self.batch, *self.shape), generator=g)
        return x.to(device=device, dtype=getattr(torch, self.dtype))

    def with_batch(self, batch: int) -> InputSpec:
        return dataclasses.replace(self, batch=batch)

    def to_dict(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "batch": self.batch, "dtype": self.dtype}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InputSpec:
        return cls(tuple(d["shape"]), d.get("batch", 1), d.get("dtype", "float32"))


@dataclass(frozen=True)
class LayerCost:
    """Cost of one layer (or fused group of layers)."""

    name: str
    op: str
    flops: int = 0
    params: int = 0
    bytes: int = 0
    latency_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Measurement:
    """What one profiler says about one model on one device.

    Latencies are per batch, in milliseconds. ``method`` is ``"measured"`` when the number
    comes from running the model, ``"predicted"`` when it comes from a model of the device,
    ``"counted"`` for static counts (no latency).
    """

    method: str
    device: str
    runtime: str
    precision: str = "fp32"
    batch: int = 1
    latency_ms: float | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    cv: float | None = None
    iterations: int = 0
    threads: int | None = None
    params: int | None = None
    flops: int | None = None
    activation_bytes: int | None = None
    weight_bytes: int | None = None
    peak_activation_bytes: int | None = None
    layers: tuple[LayerCost, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in ("measured", "predicted", "counted"):
            raise ValueError(f"method must be measured|predicted|counted, got {self.method}")

    @property
    def latency_per_image_ms(self) -> float | None:
        return None if self.latency_ms is None else self.latency_ms / self.batch

    @property
    def throughput(self) -> float | None:
        """Images per second."""
        if not self.latency_ms:
            return None
        return 1000.0 * self.batch / self.latency_ms

    def to_dict(self, layers: bool = True) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["layers"] = [dataclasses.asdict(layer) for layer in self.layers] if layers else []
        d["latency_per_image_ms"] = self.latency_per_image_ms
        d["throughput"] = self.throughput
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Measurement:
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        kw["layers"] = tuple(LayerCost(**layer) for layer in d.get("layers", []))
        return cls(**kw)


class Profiler:
    """Base profiler. Use as ``with create_profiler("onnxruntime") as p: p.profile(m, spec)``."""

    name: str = "base"

    def __enter__(self) -> Profiler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release backend resources (sessions, engines). Idempotent."""

    def profile(self, model: nn.Module, input_spec: InputSpec) -> Measurement:
        if not isinstance(model, nn.Module):
            raise UsageError(f"{self.name} profiler needs an nn.Module, got {type(model).__name__}")
        if not isinstance(input_spec, InputSpec):
            raise UsageError("input_spec must be an InputSpec")
        return self._impl(model, input_spec)

    def _impl(self, model: nn.Module, input_spec: InputSpec) -> Measurement:
        raise NotImplementedError


_PROFILERS: Registry[Profiler] = Registry("profilers", UsageError)
_F = TypeVar("_F", bound=Callable[..., Profiler])


def register_profiler(name: str) -> Callable[[_F], _F]:
    """Class decorator: make ``create_profiler(name, **kwargs)`` build this profiler.

    Raises:
        ValueError: ``name`` is already registered.
    """
    return _PROFILERS.register(name)


def create_profiler(name: str, **kwargs: Any) -> Profiler:
    """A new profiler of the registered ``name``, built with ``kwargs``.

    Raises:
        UsageError: unknown name (the message suggests close names and lists the known ones).
    """
    return _PROFILERS.create(name, **kwargs)


def list_profilers() -> list[str]:
    """Sorted names of every registered profiler (built-ins and entry-point plugins)."""
    return _PROFILERS.names()


def is_profiler(name: str) -> bool:
    """Whether ``name`` is a registered profiler."""
    return name in _PROFILERS


def lazy_import(module: str, install_hint: str) -> Any:
    """Import ``module`` or raise a one-line BackendUnavailableError naming how to install it.

    Args:
        module: the module name (``"onnxruntime"``, ``"tensorrt"``).
        install_hint: the hint line of the error.
    """
    import importlib

    try:
        return importlib.import_module(module)
    except Exception as exc:  # ImportError, or a broken native library
        raise BackendUnavailableError(
            f"{module} is not available ({type(exc).__name__}: {exc})", hint=install_hint
        ) from None


__all__ = [
    "InputSpec",
    "LayerCost",
    "Measurement",
    "Profiler",
    "create_profiler",
    "is_profiler",
    "lazy_import",
    "list_profilers",
    "register_profiler",
]
