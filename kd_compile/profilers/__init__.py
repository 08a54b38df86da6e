"""Profilers: what a model costs on a device, measured, predicted or counted.

Public front (the names below are the API; submodules hold the details)::

    from kd_compile.profilers import InputSpec, TimingPolicy, create_profiler

    with create_profiler("onnxruntime", threads=1, timing=TimingPolicy.fast()) as p:
        m = p.profile(model, InputSpec((3, 224, 224)))

Registry, the timm way: each built-in profiler registers itself with ``@register_profiler``
when its module is imported, and this package imports them all below (``counting``,
``roofline``, ``onnxruntime``, ``torch``, ``tensorrt``, ``trtexec``). Those modules import heavy
backends (onnxruntime, onnx, tensorrt) only inside the functions that use them, so importing
this package stays light. Third-party profilers register through the ``kd_compile.profilers``
entry-point group.
"""

from __future__ import annotations

# built-in profilers: importing a module registers its profilers
from . import counting, onnxrt, roofline, tensorrt, torch_timer  # noqa: F401
from .base import (
    InputSpec,
    LayerCost,
    Measurement,
    Profiler,
    create_profiler,
    is_profiler,
    list_profilers,
    register_profiler,
)
from .timing import TimingPolicy, TimingResult, latency_stats

__all__ = [
    "InputSpec",
    "LayerCost",
    "Measurement",
    "Profiler",
    "TimingPolicy",
    "TimingResult",
    "create_profiler",
    "is_profiler",
    "latency_stats",
    "list_profilers",
    "register_profiler",
]
