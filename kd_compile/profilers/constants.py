"""The latency predictor's fitted constants and per-device scales (the model: :mod:`.roofline`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Constants:
    """The predictor's fitted, device-independent constants (the model: :mod:`.roofline`'s docstring).

    Attributes:
        e_tc: compute efficiency of conv/matmul/attention on tensor cores, and of a graph runtime's on CUDA cores.
        e_cuda: compute efficiency of eager conv/matmul/attention on CUDA cores.
        e_dw: compute efficiency of depthwise convs (CUDA cores).
        e_mem: fraction of DRAM bandwidth any kernel reaches.
        c_half: GEMM dimension at which an eager conv/matmul reaches half its efficiency. Held at
            16 (``calibrate.HELD``): fitted, it runs to 16.4 (``benchmarks/latency_choices.py``).
        t0_us: fixed GPU time per eager ATen op (launch latency, ramp-up and tail), microseconds
            at ``T0_CLOCK_GHZ`` (GPU cycles). Held at 5 us, not fitted (``calibrate.HELD``).
        t0_graph_us: the same per kernel of a graph runtime (TensorRT, ``torch.compile``, ONNX
            Runtime), whose kernels follow each other on one stream. Fitted.
        h_lib_us: eager host cost of one library ATen op (conv, matmul, norm), microseconds.
        h_pw_us: eager host cost of one native pointwise/pool ATen op, microseconds.
        h_kernel_us: host cost per launched kernel for graph runtimes (TensorRT), microseconds.
            Held at 0, not fitted (``calibrate.HELD``).
        edge: host-cost factor of a Jetson's Arm CPU relative to a desktop/server host.
        c_half_graph: the same as ``c_half`` for a graph runtime's tensor-core kernels. Tied to
            ``c_half`` (``calibrate.TIED``); fitted apart only to compare structures.
        tc_gflop_per_j: tensor-core GEMM work a board sustains per joule at its power limit
            (``tdp_w`` of the target): a tensor-core kernel runs at no more than this times
            ``tdp_w`` FLOP/s, whatever its datasheet peak (a 70 W T4 or a Jetson cannot hold its
            tensor-core peak). Fitted; a target without ``tdp_w`` has no cap.
        s_compile: compute time of ``torch.compile``'s library calls (conv, depthwise conv, matmul,
            attention: runtime ``inductor``) against eager PyTorch's on the same GPU, which sets
            the rest. Fitted on its own, after the others, on the one ``torch.compile`` table
            (``calibrate.tables.CHECK_TABLES``; ``docs/latency-predictor.md``); no other table
            measures ``torch.compile``, so no other fit moves it. 1 (eager's speed) in a file
            written before it existed.
        node_beta: how the power cap's FLOPs per joule grow with a finer process node: a board
            made in ``process_nm`` (target profile) sustains ``tc_gflop_per_j x (12 /
            process_nm) ** node_beta`` GFLOP per joule, ``tc_gflop_per_j`` being a 12-nm board's
            (Volta and Turing, where the cap binds in the measured tables). 0 (one efficiency for
            every generation) in a file written before it existed.
    """

    e_tc: float = 0.6
    e_cuda: float = 0.5
    e_dw: float = 0.05
    e_mem: float = 0.9
    c_half: float = 16.0
    t0_us: float = 5.0
    h_lib_us: float = 40.0
    h_pw_us: float = 15.0
    h_kernel_us: float = 0.0
    edge: float = 2.5
    t0_graph_us: float = 3.0
    c_half_graph: float = 16.0
    tc_gflop_per_j: float = 200.0
    s_compile: float = 1.0
    node_beta: float = 1.0

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Constants:
        """Constants from a calibration file; one written before the power cap existed (no
        ``tc_gflop_per_j``) was fitted without it and keeps predicting without it, one written
        before the process node entered it (no ``node_beta``) keeps one efficiency for every node."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{"tc_gflop_per_j": NO_POWER_CAP, "node_beta": 0.0,
                      **{k: float(v) for k, v in d.items() if k in names}})

    def vector(self) -> np.ndarray:
        return np.array([getattr(self, f.name) for f in dataclasses.fields(self)], dtype=float)

    @classmethod
    def from_vector(cls, v: Sequence[float]) -> Constants:
        return cls(*[float(x) for x in v])


CONSTANT_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Constants))
# the process node (nm) whose boards' FLOPs per joule ``tc_gflop_per_j`` is: ``Constants.node_beta``
NODE_REF_NM = 12.0
# ``tc_gflop_per_j`` that never binds (a calibration fitted before the power cap: no cap)
NO_POWER_CAP = 1e9
# The fits' starting point and the values of the constants they hold (``calibrate.HELD``: t0_us,
# h_kernel_us); used as they are only when no calibration file exists (a fresh checkout without
# the committed JSON): typical cuDNN/cuBLAS fractions of peak and dispatch costs of the order the
# HELP eager tables show.
DEFAULT_CONSTANTS = Constants()


@dataclass(frozen=True)
class DeviceScales:
    """Per-device corrections fitted on that device's own measurements (1 = none).

    Attributes:
        roofline: multiplies every kernel's compute time (sustained vs datasheet throughput) for a
            runtime without a scale of its own in ``roofline_by_runtime``; a fit sets it to the
            geometric mean of those.
        fixed: multiplies the fixed per-kernel costs (host dispatch, launch), per runtime
            (``{"tensorrt": 0.8}``); missing runtimes: 1.
        roofline_by_runtime: the compute scale of each runtime measured on the device (TensorRT's
            tuned tactics and eager PyTorch's cuDNN heuristics reach different shares of the same
            datasheet: on the AGX Xavier VGG runs at the predicted rate in TensorRT and at half of
            it in eager fp16).
        memory: multiplies every kernel's memory time for a runtime without a scale of its own in
            ``memory_by_runtime`` (a fit: their geometric mean); ``None`` (files written before
            the memory scale had its own): the compute scale.
        memory_by_runtime: the memory scale of each runtime measured on the device (a device's
            sustained share of its DRAM bandwidth and caches is not its share of its peak FLOP/s).
    """

    roofline: float = 1.0
    fixed: dict[str, float] = field(default_factory=dict)
    roofline_by_runtime: dict[str, float] = field(default_factory=dict)
    memory: float | None = None
    memory_by_runtime: dict[str, float] = field(default_factory=dict)

    def fixed_for(self, runtime: str) -> float:
        return float(self.fixed.get(runtime, 1.0))

    def roofline_for(self, runtime: str) -> float:
        return float(self.roofline_by_runtime.get(runtime, self.roofline))

    def memory_for(self, runtime: str) -> float:
        if runtime in self.memory_by_runtime:
            return float(self.memory_by_runtime[runtime])
        return self.roofline_for(runtime) if self.memory is None else float(self.memory)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"roofline": self.roofline, "fixed": dict(self.fixed)}
        if self.roofline_by_runtime:
            d["roofline_by_runtime"] = dict(self.roofline_by_runtime)
        if self.memory is not None:
            d["memory"] = self.memory
        if self.memory_by_runtime:
            d["memory_by_runtime"] = dict(self.memory_by_runtime)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> DeviceScales:
        d = d or {}
        return cls(float(d.get("roofline", 1.0)), {k: float(v) for k, v in (d.get("fixed") or {}).items()},
                   {k: float(v) for k, v in (d.get("roofline_by_runtime") or {}).items()},
                   None if d.get("memory") is None else float(d["memory"]),
                   {k: float(v) for k, v in (d.get("memory_by_runtime") or {}).items()})
