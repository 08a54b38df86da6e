"""Roofline latency predictor: per-kernel max(compute time, memory time) + launch overhead.

The model's ATen ops (from :mod:`.counting`) are grouped into the kernels a runtime would
launch (:func:`fuse`), then each kernel costs

    t = max(flops / (peak x e_class x ch / (ch + c_half)),  bytes / (bandwidth x e_mem_class))
        + launch_overhead x runtime_factor x launch_scale

``peak`` is the target's peak for the precision (tensor-core peak for conv/matmul/attention,
CUDA-core peak for depthwise convs, which cuDNN/TensorRT do not run on tensor cores); bytes are
counted in fp32 and scaled by the precision's element size. The efficiencies (``e_*``), the
channel half-saturation ``c_half`` and ``launch_scale`` are fitted per target/runtime/precision by
:mod:`kd_compile.calibrate` and stored in ``kd_compile/targets/calibration/<target>.json`` with
the measurement files they were fitted on; without a fit, :data:`DEFAULT_EFFICIENCY` is used.

Fusion rules per runtime (the graph rewrites each runtime is documented to do):

* ``tensorrt``: BatchNorm after a conv/linear is folded into its weights; pointwise ops
  (activations, residual adds, scales) are fused into the preceding kernel; LayerNorm/GroupNorm
  and pools start a kernel of their own (which absorbs following pointwise ops).
* ``inductor`` (``torch.compile``): as TensorRT; BN folding under ``torch.no_grad``/freezing.
* ``onnxruntime``: BN folded into conv; one activation fused into the preceding conv/GEMM
  (ORT's ``FusedConv``/``FusedGemm``); every other op is its own kernel.
* ``torch`` (eager): no fusion, every ATen op is a kernel.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from ..errors import UsageError
from ..targets.profile import PRECISIONS, TargetProfile, get_target
from .base import InputSpec, LayerCost, Measurement, Profiler, register_profiler
from .counting import OpRecord, trace_ops

CALIBRATION_DIR = Path(__file__).resolve().parent.parent / "targets" / "calibration"

RUNTIME_NAMES = ("tensorrt", "torch", "onnxruntime", "inductor")
BYTES_PER_ELEMENT = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}

# Kernel classes the efficiencies are keyed by.
KERNEL_CLASSES = ("conv", "dwconv", "matmul", "attention", "elementwise")
_CLASS_INDEX = {c: i for i, c in enumerate(KERNEL_CLASSES)}
_TENSOR_CORE = (True, False, True, True, False)
# op class from counting -> kernel class; norm/pool are memory-bound like pointwise ops.
_TO_KERNEL = {"conv": "conv", "dwconv": "dwconv", "matmul": "matmul", "attention": "attention",
              "batchnorm": "elementwise", "norm": "elementwise", "pool": "elementwise", "elementwise": "elementwise"}


@dataclass(frozen=True)
class RuntimeRules:
    """How a runtime groups ops into kernels and what a kernel launch costs.

    Attributes:
        fold_bn: BatchNorm after conv/linear disappears (weights folded at build time).
        fuse_pointwise: every pointwise op after any kernel joins it.
        fuse_one_activation: only a single activation right after conv/GEMM joins it.
        launch_factor: multiplies the target's per-kernel launch overhead (which is quoted for
            TensorRT). Eager PyTorch pays the Python/dispatcher cost per op (~2x).
    """

    fold_bn: bool
    fuse_pointwise: bool
    fuse_one_activation: bool
    launch_factor: float


RUNTIME_RULES: dict[str, RuntimeRules] = {
    "tensorrt": RuntimeRules(True, True, False, 1.0),
    "inductor": RuntimeRules(True, True, False, 1.5),
    "onnxruntime": RuntimeRules(True, False, True, 1.0),
    "torch": RuntimeRules(False, False, False, 2.0),
}


@dataclass(frozen=True)
class Efficiency:
    """Fraction of peak each kernel class reaches, plus the launch-overhead scale.

    Attributes:
        conv, dwconv, matmul, attention: compute efficiency (fraction of peak FLOP/s).
        mem_compute: memory efficiency (fraction of DRAM bandwidth) of conv/GEMM kernels.
        mem_elementwise: memory efficiency of pointwise/norm/pool kernels.
        c_half: channel count at which a GEMM-like kernel reaches half its efficiency.
        launch_scale: multiplies the per-kernel launch overhead.
    """

    conv: float = 0.5
    dwconv: float = 0.3
    matmul: float = 0.6
    attention: float = 0.4
    mem_compute: float = 0.6
    mem_elementwise: float = 0.7
    c_half: float = 16.0
    launch_scale: float = 1.0

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Efficiency:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: float(v) for k, v in d.items() if k in names})

    def vector(self) -> np.ndarray:
        return np.array([getattr(self, f.name) for f in dataclasses.fields(self)], dtype=float)

    @classmethod
    def from_vector(cls, v: Sequence[float]) -> Efficiency:
        return cls(*[float(x) for x in v])


# Hand-set starting values (typical cuDNN/cuBLAS fractions of peak); used only when no fit
# exists for a target. Fitted values live in targets/calibration/*.json with their sources.
DEFAULT_EFFICIENCY = Efficiency()


@dataclass(frozen=True)
class Kernel:
    """One launched kernel (a fused group of ops), at batch 1, fp32 bytes."""

    name: str
    op: str
    flops: int
    act_bytes: int
    weight_bytes: int
    ch: int
    n_ops: int


def fuse(ops: Sequence[OpRecord], runtime: str) -> list[Kernel]:
    """Group ATen ops into the kernels ``runtime`` launches (rules in the module docstring).

    A fused follower's output replaces the head's output in the traffic, and any input of the
    follower that is not the chained tensor (a residual) is still read.
    """
    rules = RUNTIME_RULES[runtime]
    kernels: list[dict[str, Any]] = []
    for r in ops:
        k = _TO_KERNEL[r.op]
        prev = kernels[-1] if kernels else None
        absorb = False
        if prev is not None:
            head = prev["op"]
            gemm_head = head in ("conv", "dwconv", "matmul")
            if r.op == "batchnorm" and rules.fold_bn and gemm_head and prev["n_pw"] == 0 or r.op == "elementwise" and rules.fuse_pointwise:  # noqa: E501
                absorb = True
            elif r.op == "elementwise" and rules.fuse_one_activation and gemm_head and prev["n_pw"] == 0:
                absorb = r.in_bytes <= prev["out"]  # a unary activation, not a residual add
        if absorb and prev is not None:
            extra = max(0, r.in_bytes - prev["out"])
            prev["act"] += extra
            prev["act"] += r.out_bytes - prev["out"]
            prev["out"] = r.out_bytes
            prev["w"] += r.weight_bytes
            prev["flops"] += r.flops
            prev["n"] += 1
            prev["n_pw"] += 0 if r.op == "batchnorm" else 1
            continue
        kernels.append({"name": r.module or "(model)", "op": r.op, "cls": k, "flops": r.flops,
                        "act": r.in_bytes + r.out_bytes, "out": r.out_bytes, "w": r.weight_bytes,
                        "ch": r.ch, "n": 1, "n_pw": 0})
    return [Kernel(d["name"], d["cls"], d["flops"], max(0, d["act"]), d["w"], d["ch"], d["n"]) for d in kernels]


@dataclass(frozen=True)
class KernelTable:
    """Kernels of many models as flat arrays, for fast vectorised prediction and fitting.

    Attributes:
        model: index of the model each kernel belongs to, shape (K,).
        cls: kernel class index into ``KERNEL_CLASSES``, shape (K,).
        flops, act_bytes, weight_bytes, ch: per-kernel values at batch 1, fp32, shape (K,).
        batch: batch of each model, shape (M,).
        n_models: M.
    """

    model: np.ndarray
    cls: np.ndarray
    flops: np.ndarray
    act_bytes: np.ndarray
    weight_bytes: np.ndarray
    ch: np.ndarray
    batch: np.ndarray
    n_models: int

    @classmethod
    def build(cls, models: Sequence[Sequence[Kernel]], batches: Sequence[int]) -> KernelTable:
        idx, c, f, a, w, ch = [], [], [], [], [], []
        for i, ks in enumerate(models):
            for k in ks:
                idx.append(i)
                c.append(_CLASS_INDEX[k.op])
                f.append(k.flops)
                a.append(k.act_bytes)
                w.append(k.weight_bytes)
                ch.append(k.ch)
        return cls(np.array(idx, dtype=np.int64), np.array(c, dtype=np.int64), np.array(f, dtype=float),
                   np.array(a, dtype=float), np.array(w, dtype=float), np.array(ch, dtype=float),
                   np.asarray(batches, dtype=float), len(models))


@dataclass(frozen=True)
class DeviceTerms:
    """Target numbers the predictor needs, in SI units.

    Attributes:
        peak: FLOP/s per kernel class, shape (5,) (tensor-core or CUDA-core peak).
        bandwidth: bytes/s.
        launch_s: seconds per kernel launch for the runtime (before ``launch_scale``).
        bytes_scale: element size / 4 (ops are counted in fp32).
    """

    peak: np.ndarray
    bandwidth: float
    launch_s: float
    bytes_scale: float

    @classmethod
    def of(cls, target: TargetProfile, precision: str, runtime: str) -> DeviceTerms:
        tc = target.peak_for(precision, tensor_cores=True) * 1e12
        cuda = target.peak_for(precision, tensor_cores=False) * 1e12
        if precision == "fp32" and runtime in ("tensorrt", "inductor") and target.peak_tflops.get("tf32_tensor"):
            # TensorRT builds with TF32 enabled by default; conv/GEMM then run on tensor cores.
            tc = target.peak_tflops["tf32_tensor"] * 1e12
        peak = np.array([tc if t else cuda for t in _TENSOR_CORE])
        return cls(peak, target.memory_bandwidth_gbs * 1e9,
                   target.launch_overhead_us * 1e-6 * RUNTIME_RULES[runtime].launch_factor,
                   BYTES_PER_ELEMENT[precision] / 4.0)


def kernel_times(table: KernelTable, dev: DeviceTerms, eff: Efficiency | np.ndarray) -> np.ndarray:
    """Seconds per kernel, shape (K,), for each model at its batch."""
    e = eff.vector() if isinstance(eff, Efficiency) else np.asarray(eff, dtype=float)
    e_compute = e[:4]
    mem_c, mem_e, c_half, launch_scale = e[4], e[5], e[6], e[7]
    b = table.batch[table.model]
    cls = table.cls
    gemm = cls < 4
    ch_fac = np.where((cls == 0) | (cls == 2) | (cls == 3), table.ch / (table.ch + c_half), 1.0)
    comp_eff = np.where(gemm, e_compute[np.minimum(cls, 3)], 1.0) * ch_fac
    t_comp = np.where(gemm, b * table.flops / (dev.peak[cls] * comp_eff), 0.0)
    mem_eff = np.where(gemm, mem_c, mem_e)
    t_mem = (b * table.act_bytes + table.weight_bytes) * dev.bytes_scale / (dev.bandwidth * mem_eff)
    return np.maximum(t_comp, t_mem) + dev.launch_s * launch_scale


def model_times(table: KernelTable, dev: DeviceTerms, eff: Efficiency | np.ndarray) -> np.ndarray:
    """Seconds per batch for each model, shape (M,)."""
    return np.bincount(table.model, weights=kernel_times(table, dev, eff), minlength=table.n_models)


def load_calibration(target: TargetProfile, runtime: str, precision: str) -> tuple[Efficiency, dict[str, Any]]:
    """The fitted efficiencies for ``target`` (profile table first, then the JSON file).

    Falls back to a fit for the same precision under another runtime of the same target, then
    to :data:`DEFAULT_EFFICIENCY`. The second value says where the constants came from.
    """
    key = f"{runtime}/{precision}"
    fits: dict[str, Any] = dict(target.calibration)
    f = CALIBRATION_DIR / f"{target.name}.json"
    if f.is_file():
        data = json.loads(f.read_text(encoding="utf-8"))
        for k, v in data.get("fits", {}).items():
            fits.setdefault(k, v)
    if key in fits:
        return Efficiency.from_dict(fits[key]["constants"]), {"calibration": key, **_provenance(fits[key])}
    for k, v in sorted(fits.items()):
        if k.endswith(f"/{precision}"):
            # Kernel efficiencies transfer across runtimes; launch costs do not (a fit at
            # batch 1024 in eager PyTorch says little about TensorRT at batch 1), so reset.
            eff = dataclasses.replace(Efficiency.from_dict(v["constants"]), launch_scale=1.0)
            return eff, {"calibration": f"{k} (launch_scale reset to 1)", **_provenance(v)}
    return DEFAULT_EFFICIENCY, {"calibration": "default (uncalibrated)"}


def _provenance(fit: dict[str, Any]) -> dict[str, Any]:
    return {k: fit[k] for k in ("fitted_on", "quality") if k in fit}


def predict_kernels(
    ops: Sequence[OpRecord],
    target: TargetProfile,
    precision: str,
    runtime: str,
    batch: int,
    eff: Efficiency,
) -> tuple[list[Kernel], np.ndarray]:
    """Kernels of one model and their predicted seconds at ``batch``."""
    kernels = fuse(ops, runtime)
    table = KernelTable.build([kernels], [batch])
    return kernels, kernel_times(table, DeviceTerms.of(target, precision, runtime), eff)


@register_profiler("roofline")
class RooflineProfiler(Profiler):
    """Predicted latency on a target device from counted costs and a fitted roofline.

    Args:
        target: a ``TargetProfile`` or a target name/path for ``get_target``.
        precision: ``fp32``/``fp16``/``bf16``/``int8``; default: the target's.
        runtime: ``tensorrt``/``torch``/``onnxruntime``/``inductor``; default: the target's.
        batch: batch to predict for; default: the input spec's.
        efficiency: override the fitted constants (used by leave-one-device-out benchmarks).
    """

    name = "roofline"

    def __init__(
        self,
        target: TargetProfile | str,
        precision: str | None = None,
        runtime: str | None = None,
        batch: int | None = None,
        efficiency: Efficiency | None = None,
    ) -> None:
        self.target = target if isinstance(target, TargetProfile) else get_target(target)
        self.precision = precision or self.target.default_precision
        self.runtime = runtime or self.target.default_runtime
        if self.precision not in PRECISIONS:
            raise UsageError(f"unknown precision '{self.precision}' (known: {', '.join(PRECISIONS)})")
        if self.runtime not in RUNTIME_RULES:
            raise UsageError(f"unknown runtime '{self.runtime}' (known: {', '.join(RUNTIME_NAMES)})")
        if batch is not None and batch <= 0:
            raise UsageError(f"batch must be positive, got {batch}")
        self.batch = batch
        if efficiency is not None:
            self.efficiency, self.source = efficiency, {"calibration": "given"}
        else:
            self.efficiency, self.source = load_calibration(self.target, self.runtime, self.precision)

    def predict_ops(self, ops: Sequence[OpRecord], batch: int) -> Measurement:
        """Predict from already-counted ops (no forward pass)."""
        kernels, secs = predict_kernels(ops, self.target, self.precision, self.runtime, batch, self.efficiency)
        bs = BYTES_PER_ELEMENT[self.precision] / 4.0
        layers = tuple(
            LayerCost(name=k.name, op=k.op, flops=batch * k.flops,
                      bytes=int((batch * k.act_bytes + k.weight_bytes) * bs), latency_ms=float(s * 1e3))
            for k, s in zip(kernels, secs, strict=True)
        )
        return Measurement(
            method="predicted",
            device=self.target.name,
            runtime=self.runtime,
            precision=self.precision,
            batch=batch,
            latency_ms=float(secs.sum() * 1e3),
            flops=batch * sum(r.flops for r in ops),
            layers=layers,
            extra={"kernels": len(kernels), "efficiency": self.efficiency.to_dict(), **self.source},
        )

    def _impl(self, model: nn.Module, input_spec: InputSpec) -> Measurement:
        batch = self.batch or input_spec.batch
        tr = trace_ops(model, tuple(input_spec.shape))
        m = self.predict_ops(tr.ops, batch)
        return dataclasses.replace(m, params=tr.params, weight_bytes=tr.weight_bytes)
