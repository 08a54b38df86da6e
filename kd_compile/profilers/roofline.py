"""Latency predictor for a device we do not have: per-kernel roofline plus per-kernel fixed costs.

The model's ATen ops (from :mod:`.counting`) are grouped into the kernels a runtime launches
(:func:`fuse`). At batch ``b`` each kernel ``k`` costs the larger of what the GPU needs and what the
host needs to issue it, and a model costs the sum over its kernels::

    gpu_k  = max( s_roofline x b F_k / R_k,   R_k = P_class x e_class x pen_k,   pen_k = ch_k / (ch_k + c_half_rt)
                  s_memory x (b A_k + W_k) x bytes_scale / (BW x e_mem) )  +  s_fixed x J x t0_rt x f0 / f
    host_k = s_fixed x J x ( h_lib x n_lib_k + h_pw x n_pw_k )     eager PyTorch: per ATen op
           = s_fixed x J x h_kernel                                 TensorRT & co: per kernel
    t      = sum_k max(gpu_k, host_k)

with ``J = edge`` on a Jetson and 1 elsewhere; a tensor-core kernel's rate is capped by the
board's power limit, ``R_k = min(P_tc x e_tc x pen_k, k_tc x (12 / nm) ** node_beta x TDP)``
(``k_tc`` = ``tc_gflop_per_j``, a 12-nm board's work per joule: a 70 W T4 or a Jetson cannot hold its
tensor-core peak; ``nm`` the die's process node, a joule buying more FLOPs on a finer one; no cap
where the profile gives no TDP);
``t0_rt`` is ``t0`` for an eager ATen op and ``t0_graph`` for a kernel of a graph runtime
(TensorRT & co, back to back on one stream), each a
number of GPU cycles written as the time it takes at ``f0`` = 1.5 GHz, so a GPU with boost clock
``f`` pays ``t0_rt x f0 / f``. An eager view call (``x.view``, ``transpose``: :mod:`.counting`) is a
kernel with no GPU side (``gpu_k = 0``) that pays ``h_pw`` on the host; graph runtimes launch
nothing for it.

*From the datasheet* (target TOML): ``P_class`` (tensor-core peak for conv/matmul/attention in
fp16/bf16/int8 on GPUs that have tensor cores, else the CUDA-core peak; fp16 on GPUs whose native
fp16 is slower than fp32, e.g. Pascal GP102, runs at the fp32 rate, as cuDNN/TensorRT do there),
``BW`` (DRAM bandwidth; in fp32 on a GPU with TF32, ``P_class`` is the TF32 tensor-core peak for
TensorRT's conv/matmul and for PyTorch's convolutions only, which is what each runtime does by
default: :class:`DeviceTerms`), ``f`` (boost clock; none given: ``f0``), ``TDP`` (``tdp_w``, the board's
power limit), ``nm`` (``process_nm``, the process node) and ``kind`` (``edge-gpu``: a
Jetson, whose Arm host pays ``edge``).
A graph runtime's conv/matmul off tensor cores (Jetson Nano, TX2, Pascal; fp32 on Turing) runs at
``e_tc`` with ``pen_k = 1``: its tuned CUDA-core tactics reach the share of peak its tensor-core
ones do, with no tile waste on small channels (eager CUDA-core GEMMs keep ``e_cuda`` and ``c_half``;
why: ``docs/latency-predictor.md``, from torch2trt's Jetson Nano table).
*Counted*: ``F_k`` FLOPs, ``A_k`` activation bytes, ``W_k`` weight bytes (fp32, scaled by the
precision's element size), ``ch_k`` the small GEMM dimension, ``n_lib_k``/``n_pw_k`` the ATen ops
that call cuDNN/cuBLAS (conv, matmul, norms) or are native pointwise/pool ops.
*Fitted* (:class:`Constants`: 9 numbers fitted on every measured table together by
:mod:`kd_compile.calibrate`, 5 held or tied): efficiencies ``e_tc``/``e_cuda``/``e_dw``/``e_mem``,
the tensor-core work per joule ``k_tc``,
the fixed GPU cost per kernel ``t0_graph`` of graph runtimes, the eager host costs ``h_lib`` and
``h_pw`` (per ATen op), and the Jetson host factor ``edge``; fitted apart, on the one table that
measures ``torch.compile``: ``s_compile``, which multiplies the compute time of its library calls
(conv, depthwise conv, matmul, attention), power cap included, against eager PyTorch's; held:
``t0`` (an eager op's fixed GPU cost, 5 us), ``c_half`` (the channel half-saturation, 16; graph
runtimes' ``c_half_graph`` is tied to it), ``h_kernel`` (a graph runtime's host cost per kernel,
0) and ``node_beta`` (the power cap's growth with a finer node, 1), for the reasons in
``docs/latency-predictor.md``. Graph runtimes' kernels follow
:mod:`.fusion`: a concat whose inputs other layers also read is copied input by input (a DenseNet
block on TensorRT), and a layout copy is a kernel of its own (what each rule moved:
``docs/latency-predictor.md``). A device with measurements also gets *device scales* fitted on its own rows (a device
without keeps 1), each per runtime measured there: ``s_roofline`` (sustained throughput; per runtime
because TensorRT's tuned tactics and eager cuDNN reach different shares of one datasheet: on the
AGX Xavier one shared scale left VGG 1.40x too slow in TensorRT and 0.72x in eager fp16, and per
runtime the device's own 5-fold median error went from 17.8% to 9.9%), which scales memory time
too (``s_memory = s_roofline``: a memory scale of its own lost on the devices' own 5-fold error
over their models once tensor cores got their power cap, ``calibrate.SEPARATE_MEMORY``;
``benchmarks/latency_choices.py``), and ``s_fixed`` (its host's dispatch speed and launch path).
``sum of max`` rather than a pipeline (host running ahead of the GPU) is what the HELP eager tables
follow best (in-device fits: 1-4% median error versus 2-4% and worse ranks for the pipeline
recurrence). What was tried and left out, with its figures, and what moved which bar:
``docs/latency-predictor.md``.

Fusion rules per runtime: :mod:`.fusion`.

Every prediction carries the error band measured for its target, runtime, precision and batch
regime (:func:`error_band`), from ``kd_compile/targets/calibration/<target>.json``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from ..errors import UsageError
from ..targets.profile import PRECISIONS, TargetProfile, get_target
from .base import InputSpec, LayerCost, Measurement, Profiler, register_profiler
from .constants import CONSTANT_NAMES, DEFAULT_CONSTANTS, NO_POWER_CAP, NODE_REF_NM, Constants, DeviceScales
from .counting import OpRecord, trace_ops
from .error_bands import (
    CALIBRATION_DIR,
    SHARED_FIT,
    batch_regime,
    error_band,
    large_input_notes,
    own_calibration,
    read_calibration,
    regime_key,
    size_range_caveat,
)
from .fusion import _KCOLS, KERNEL_CLASSES, RUNTIME_RULES, Kernel, fuse, kernel_rows

# re-exported: the kernel grouping (``.fusion``), the bands (``.error_bands``) and the constants
# (``.constants``) are part of this API
__all__ = [
    "CALIBRATION_DIR", "CONSTANT_NAMES", "CPU_RUNTIMES", "DEFAULT_CONSTANTS", "NODE_REF_NM", "NO_POWER_CAP",
    "RUNTIME_RULES", "SHARED_FIT", "Constants", "DeviceScales", "DeviceTerms", "Kernel",
    "KernelTable", "RooflineProfiler", "batch_regime", "check_predictable", "error_band", "fuse", "kernel_rows",
    "load_calibration", "on_tensor_cores", "read_calibration", "regime_key", "row_seconds",
]


RUNTIME_NAMES = ("tensorrt", "torch", "onnxruntime", "inductor")
# runtimes whose fp32 runs convolutions on TF32 tensor cores by default (DeviceTerms.of)
TF32_RUNTIMES = ("tensorrt", "torch", "inductor")
# runtimes a CPU target runs (TensorRT and the GPU-rule inductor model are NVIDIA-GPU runtimes)
CPU_RUNTIMES = ("onnxruntime", "torch")
BYTES_PER_ELEMENT = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}
_VIEW = KERNEL_CLASSES.index("view")  # an eager view call: host dispatch only, no GPU time
# The clock ``t0`` (fixed GPU cycles per kernel) is quoted at: a GPU at f GHz pays t0 x 1.5 / f.
T0_CLOCK_GHZ = 1.5


@dataclass(frozen=True)
class DeviceTerms:
    """What the predictor takes from a target profile for one runtime and precision.

    Attributes:
        peak_tc: FLOP/s of conv/matmul/attention (tensor cores where the GPU has them).
        peak_cuda: FLOP/s of CUDA-core work (depthwise convs; GEMMs without tensor cores).
        tensor_cores: GEMMs run on tensor cores (``e_tc``) rather than CUDA cores (``e_cuda``).
        bandwidth: DRAM bytes/s.
        bytes_scale: element size / 4 (ops are counted in fp32).
        edge: the host is a Jetson's Arm CPU.
        per_op_host: eager per-op host costs (else per kernel).
        t0_override_s: the profile's ``launch_overhead_us`` override of ``t0`` in seconds (0: none).
        clock_ghz: the GPU's boost clock (``t0`` is GPU cycles); 0 when the profile has none.
        tdp_w: the board's power limit, watts; 0 when the profile has none (no power cap).
        process_nm: the die's process node, nm; 0 when the profile has none (12-nm efficiency).
        tc_conv_only: only convolutions run on the tensor cores (``peak_tc``); matmul and
            attention run on the CUDA cores: PyTorch's fp32 on a GPU with TF32 (eager and
            ``torch.compile``), whose cuDNN convolutions default to TF32 while its matmuls do not.
        compiled: the runtime is ``torch.compile`` (``inductor``), whose library calls run at
            ``s_compile`` times eager PyTorch's compute time.
    """

    peak_tc: float
    peak_cuda: float
    tensor_cores: bool
    bandwidth: float
    bytes_scale: float
    edge: bool
    per_op_host: bool
    t0_override_s: float = 0.0
    clock_ghz: float = 0.0
    tdp_w: float = 0.0
    tc_conv_only: bool = False
    compiled: bool = False
    process_nm: float = 0.0

    @classmethod
    def of(cls, target: TargetProfile, precision: str, runtime: str) -> DeviceTerms:
        fp32 = target.peak_for("fp32")
        cuda = fp32 if precision == "fp32" else max(target.peak_for(precision, tensor_cores=False), fp32)
        tc = target.peak_for(precision, tensor_cores=True) if precision != "fp32" else fp32
        tf32 = precision == "fp32" and bool(target.peak_tflops.get("tf32_tensor"))
        if tf32 and runtime in TF32_RUNTIMES:
            # fp32 with TF32: TensorRT builds every conv/GEMM with TF32 by default (BuilderFlag.TF32);
            # PyTorch (eager and torch.compile) runs cuDNN convolutions in TF32 by default
            # (torch.backends.cudnn.allow_tf32 = True) and matmuls in fp32
            # (torch.backends.cuda.matmul.allow_tf32 = False since PyTorch 1.12); ONNX Runtime's
            # CUDA provider does neither by default (use_tf32 is its opt-in)
            tc = target.peak_tflops["tf32_tensor"]
        tc = max(tc, cuda)  # a runtime never picks a slower path than the CUDA cores
        conv_only = tf32 and runtime in ("torch", "inductor") and tc > cuda
        return cls(tc * 1e12, cuda * 1e12, tc > cuda, target.memory_bandwidth_gbs * 1e9,
                   BYTES_PER_ELEMENT[precision] / 4.0, target.kind == "edge-gpu",
                   RUNTIME_RULES[runtime].per_op_host, target.launch_overhead_us * 1e-6,
                   target.boost_clock_mhz / 1e3, target.tdp_w, conv_only, runtime == "inductor", target.process_nm)


DEV_COLUMNS = ("peak_tc", "peak_cuda", "tensor_cores", "bandwidth", "bytes_scale", "edge", "per_op_host",
               "t0_override_s", "clock_ghz", "tdp_w", "tc_conv_only", "compiled", "process_nm", "s_roofline", "s_fixed",
               "s_memory")


def device_columns(d: DeviceTerms) -> list[float]:
    """A ``DeviceTerms`` as the first thirteen ``DEV_COLUMNS`` of a ``KernelTable``."""
    return [d.peak_tc, d.peak_cuda, float(d.tensor_cores), d.bandwidth, d.bytes_scale, float(d.edge),
            float(d.per_op_host), d.t0_override_s, d.clock_ghz, d.tdp_w, float(d.tc_conv_only), float(d.compiled),
            d.process_nm]


@dataclass(frozen=True)
class KernelTable:
    """Kernels of many (model, device, runtime, batch) rows as flat arrays, for fast prediction.

    Identical kernels of one row are stored once with a count (the model is a sum over
    kernels, so order does not matter).

    Attributes:
        row: index of the row each kernel belongs to, shape (K,).
        cls, flops, act, w, ch, n, lib: per-kernel values at batch 1, fp32 (see ``kernel_rows``).
        count: multiplicity of each stored kernel.
        batch: batch of each row, shape (M,).
        dev: per-row device terms as columns (``DEV_COLUMNS``: the ``DeviceTerms`` fields, then
            s_roofline, s_fixed, s_memory), shape (M, 16).
        n_rows: M.
    """

    row: np.ndarray
    cls: np.ndarray
    flops: np.ndarray
    act: np.ndarray
    w: np.ndarray
    ch: np.ndarray
    n: np.ndarray
    lib: np.ndarray
    count: np.ndarray
    batch: np.ndarray
    dev: np.ndarray
    n_rows: int

    @classmethod
    def build(
        cls,
        kernels: Sequence[np.ndarray],
        batches: Sequence[int],
        devices: Sequence[DeviceTerms],
        scales: Sequence[tuple[float, ...]] | None = None,
    ) -> KernelTable:
        """Table of rows: ``kernels[i]`` (from ``kernel_rows``) at ``batches[i]`` on ``devices[i]``.

        ``scales[i]`` = (s_roofline, s_fixed[, s_memory]) of the row's device and runtime (default
        1, 1; s_memory defaults to s_roofline).
        """
        parts, idx, cnt = [], [], []
        for i, k in enumerate(kernels):
            if len(k):
                u, c = np.unique(k, axis=0, return_counts=True)
            else:
                u, c = np.zeros((0, len(_KCOLS))), np.zeros(0)
            parts.append(u)
            cnt.append(c)
            idx.append(np.full(len(u), i, dtype=np.int64))
        a = np.concatenate(parts) if parts else np.zeros((0, len(_KCOLS)))
        sc = list(scales) if scales is not None else [(1.0, 1.0)] * len(kernels)
        dev = np.array([[*device_columns(d), s[0], s[1], s[2] if len(s) > 2 else s[0]]
                        for d, s in zip(devices, sc, strict=True)],
                       dtype=float).reshape(-1, len(DEV_COLUMNS))
        return cls(np.concatenate(idx) if idx else np.zeros(0, np.int64), a[:, 0].astype(np.int64), a[:, 1], a[:, 2],
                   a[:, 3], a[:, 4], a[:, 5], a[:, 6], np.concatenate(cnt).astype(float) if cnt else np.zeros(0),
                   np.asarray(batches, dtype=float), dev, len(kernels))

    def subset(self, rows: np.ndarray) -> KernelTable:
        """The table restricted to the rows where ``rows`` (bool, shape (M,)) is true."""
        keep = np.asarray(rows, bool)
        remap = -np.ones(self.n_rows, np.int64)
        remap[keep] = np.arange(int(keep.sum()))
        k = keep[self.row]
        return KernelTable(remap[self.row[k]], self.cls[k], self.flops[k], self.act[k], self.w[k], self.ch[k],
                           self.n[k], self.lib[k], self.count[k], self.batch[keep], self.dev[keep], int(keep.sum()))

    def with_scales(self, roofline: np.ndarray, fixed: np.ndarray, memory: np.ndarray | None = None) -> KernelTable:
        """The same table with per-row device scales replaced (``memory`` default: ``roofline``)."""
        dev = self.dev.copy()
        dev[:, -3], dev[:, -2], dev[:, -1] = roofline, fixed, roofline if memory is None else memory
        return dataclasses.replace(self, dev=dev)


def on_tensor_cores(cls: np.ndarray, tensor_cores: np.ndarray, conv_only: np.ndarray) -> np.ndarray:
    """Which kernels (class indices ``cls``; their device's ``tensor_cores`` and ``tc_conv_only``
    columns) run on tensor cores: conv/matmul/attention on a device whose runtime and precision use
    them, only the convolutions where PyTorch's fp32 runs TF32 (:class:`DeviceTerms`)."""
    gemm = (cls == 0) | (cls == 2) | (cls == 3)
    return gemm & (tensor_cores > 0) & ((conv_only == 0) | (cls == 0))


def kernel_seconds(table: KernelTable, c: Constants | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(GPU seconds, host seconds) of each stored kernel, shape (K,) each, one instance."""
    v = c.vector() if isinstance(c, Constants) else np.asarray(c, dtype=float)
    (e_tc, e_cuda, e_dw, e_mem, c_half_eager, t0_us, h_lib, h_pw, h_kernel, edge, t0_graph, c_half_graph, tc_gfj,
     s_comp, beta) = v
    d = table.dev[table.row]
    (peak_tc, peak_cuda, tcores, bw, bscale, is_edge, per_op, t0_over, clk, tdp, conv_only, compiled, nm,
     s_roof, s_fixed, s_mem) = d.T
    b = table.batch[table.row]
    c_half = np.where(per_op > 0, c_half_eager, c_half_graph)
    gemm = (table.cls == 0) | (table.cls == 2) | (table.cls == 3)
    dw = table.cls == 1
    use_tc = on_tensor_cores(table.cls, tcores, conv_only)
    peak = np.where(use_tc, peak_tc, peak_cuda)
    graph_cuda = gemm & ~use_tc & (per_op == 0)  # a graph runtime's GEMM on CUDA cores: see the module docstring
    eff = (np.where(dw, e_dw, np.where(use_tc | graph_cuda, e_tc, e_cuda))
           * np.where(gemm & ~graph_cuda, table.ch / (table.ch + c_half), 1.0))
    rate = peak * np.maximum(eff, 1e-12)
    # the board's power limit caps tensor-core throughput (no cap where the profile gives no TDP); a
    # joule buys (12 / nm) ** node_beta times a 12-nm board's FLOPs on a finer process node
    per_j = tc_gfj * 1e9 * np.where(nm > 0, NODE_REF_NM / np.maximum(nm, 1e-9), 1.0) ** beta
    rate = np.where(use_tc & (tdp > 0), np.minimum(rate, per_j * tdp), rate)
    # torch.compile's library calls: s_compile times eager's time, power cap included (both measured at it)
    t_comp = np.where(gemm | dw, b * table.flops / rate, 0.0) * np.where(compiled > 0, s_comp, 1.0)
    t_mem = (b * table.act + table.w) * bscale / (bw * e_mem)
    jetson = np.where(is_edge > 0, edge, 1.0)
    cycles = np.where(clk > 0, T0_CLOCK_GHZ / np.maximum(clk, 1e-9), 1.0)  # t0 is GPU cycles
    t0 = np.where(t0_over > 0, t0_over, np.where(per_op > 0, t0_us, t0_graph) * 1e-6 * jetson * cycles)
    gpu = np.where(table.cls == _VIEW, 0.0, np.maximum(s_roof * t_comp, s_mem * t_mem) + s_fixed * t0)
    h = np.where(per_op > 0, h_lib * table.lib + h_pw * (table.n - table.lib), h_kernel) * 1e-6
    host = s_fixed * jetson * h
    return gpu, host


def row_seconds(table: KernelTable, c: Constants | np.ndarray) -> np.ndarray:
    """Predicted seconds per batch of each row, shape (M,)."""
    gpu, host = kernel_seconds(table, c)
    return np.bincount(table.row, weights=table.count * np.maximum(gpu, host), minlength=table.n_rows)


# -- calibration files ------------------------------------------------------------------------


def load_calibration(target: TargetProfile) -> tuple[Constants, DeviceScales, dict[str, Any]]:
    """The constants and device scales to predict ``target`` with, and where they came from.

    Order: the user's own fit (``kd-compile calibrate``: ``<cache>/calibration/<name>.json``); the
    target's shipped calibration file (``calibration/<name>.json``); else the shared
    all-device fit (``calibration/_all_devices.json``) with unit device scales (a user TOML of a
    device without measurements); else :data:`DEFAULT_CONSTANTS` (uncalibrated).
    """
    doc = own_calibration(target)
    if doc is not None and "constants" in doc:
        where = f"{doc['source']} (your calibration)" if "source" in doc else f"{target.name}.json"
        return (Constants.from_dict(doc["constants"]), DeviceScales.from_dict(doc.get("device_scales")),
                {"calibration": where, "constants_basis": doc.get("constants_basis", "")})
    shared = read_calibration(SHARED_FIT.stem)
    if shared is not None and "constants" in shared:
        return (Constants.from_dict(shared["constants"]), DeviceScales(),
                {"calibration": f"{SHARED_FIT.name} (no calibration for '{target.name}')",
                 "constants_basis": shared.get("constants_basis", "")})
    return DEFAULT_CONSTANTS, DeviceScales(), {"calibration": "default (uncalibrated)"}


# -- the profiler ------------------------------------------------------------------------------


def predict_kernels(
    ops: Sequence[OpRecord],
    target: TargetProfile,
    precision: str,
    runtime: str,
    batch: int,
    constants: Constants,
    scales: DeviceScales | None = None,
) -> tuple[list[Kernel], np.ndarray]:
    """Kernels of one model and their predicted seconds (one instance each) at ``batch``."""
    kernels = fuse(ops, runtime)
    s = scales or DeviceScales()
    dev = DeviceTerms.of(target, precision, runtime)
    rows = kernel_rows(kernels)
    # one row per kernel so each keeps its own time (no de-duplication)
    table = KernelTable.build([r[None, :] for r in rows], [batch] * len(rows), [dev] * len(rows),
                              [(s.roofline_for(runtime), s.fixed_for(runtime), s.memory_for(runtime))] * len(rows))
    gpu, host = kernel_seconds(table, constants)
    return kernels, np.maximum(gpu, host)


def check_predictable(target: TargetProfile, runtime: str, precision: str) -> None:
    """Refuse (``UsageError``) a runtime or precision ``target`` cannot run, before any prediction
    (``RooflineProfiler``) or any work a plan would start (``latency.plan_latency``)."""
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision '{precision}' (known: {', '.join(PRECISIONS)})")
    if runtime not in RUNTIME_RULES:
        raise UsageError(f"unknown runtime '{runtime}' (known: {', '.join(RUNTIME_NAMES)})")
    if precision == "bf16" and target.kind != "cpu" and not target.peak_tflops.get("bf16_tensor"):
        # bf16 arrived with Ampere's tensor cores: before it TensorRT builds no bf16 engine and
        # cuDNN has no bf16 convolutions, so a prediction at the fp16 rate would be fiction
        raise UsageError(f"'{target.name}' has no bf16 tensor cores (its profile gives no bf16_tensor peak)",
                         hint="use --precision fp16 on this GPU")
    name = target.name
    if precision == "int8" and target.kind != "cpu" and runtime in ("torch", "inductor"):
        # PyTorch's quantized convolutions and linears (fbgemm, qnnpack) run on the CPU; on a GPU,
        # eager PyTorch and torch.compile have no int8 precision to pick, so no number to predict
        raise UsageError(f"runtime '{runtime}' runs no int8 network on a GPU ('{name}'): PyTorch's "
                         "quantized ops run on the CPU only",
                         hint="use --runtime tensorrt (or onnxruntime) for int8, or --precision fp16")
    if target.kind == "cpu":
        if runtime not in CPU_RUNTIMES:
            raise UsageError(f"runtime '{runtime}' runs on NVIDIA GPUs, not on the CPU target '{name}'",
                             hint=f"use --runtime {' or '.join(CPU_RUNTIMES)}, or a GPU target")
        native = target.peak_for(precision) > target.peak_for("fp32")
        if precision in ("fp16", "bf16") and not native:
            # as ONNX Runtime's CPU provider measures: a model is run in fp32 there, not faster in fp16
            raise UsageError(f"'{name}' has no native {precision} arithmetic (its profile's "
                             f"{precision} peak is its fp32 peak)", hint="use --precision fp32 on this CPU")


@register_profiler("roofline")
class RooflineProfiler(Profiler):
    """Predicted latency on a target device from counted costs and the calibrated model.

    Args:
        target: a ``TargetProfile`` or a target name/path for ``get_target``.
        precision: ``fp32``/``fp16``/``bf16``/``int8``; default: the target's.
        runtime: ``tensorrt``/``torch``/``onnxruntime``/``inductor``; default: the target's.
        batch: batch to predict for; default: the input spec's.
        constants: override the fitted constants (used by leave-one-out benchmarks).
        scales: override the device scales (default: the calibration's, or 1 with ``constants``).
    """

    name = "roofline"

    def __init__(
        self,
        target: TargetProfile | str,
        precision: str | None = None,
        runtime: str | None = None,
        batch: int | None = None,
        constants: Constants | None = None,
        scales: DeviceScales | None = None,
    ) -> None:
        self.target = target if isinstance(target, TargetProfile) else get_target(target)
        self.precision = precision or self.target.default_precision
        self.runtime = runtime or self.target.default_runtime
        check_predictable(self.target, self.runtime, self.precision)
        # int8 on a GPU with no int8 rate above fp16's (no DP4A, as the Jetson Nano; or Volta, whose
        # tensor cores have no int8 mode): TensorRT picks its fastest kernels, fp16 ones, for every layer
        self.math_precision = self.precision
        if self.precision == "int8" and self.target.kind != "cpu" and not self.target.peak_tflops.get("int8_tensor"):
            self.math_precision = "fp16"
        if batch is not None and batch <= 0:
            raise UsageError(f"batch must be positive, got {batch}")
        self.batch = batch
        if constants is not None:
            self.constants, self.scales = constants, scales or DeviceScales()
            self.source: dict[str, Any] = {"calibration": "given"}
        else:
            self.constants, fitted, self.source = load_calibration(self.target)
            self.scales = scales or fitted

    def predict_ops(self, ops: Sequence[OpRecord], batch: int, input_px: int | None = None) -> Measurement:
        """Predict from already-counted ops (no forward pass). ``input_px``, the larger side of the
        model's input, adds what the band says of ImageNet-size inputs (:func:`large_input_notes`) and
        of an input outside the sizes it was measured at (:func:`size_range_caveat`)."""
        prec = self.math_precision
        kernels, secs = predict_kernels(ops, self.target, prec, self.runtime, batch, self.constants, self.scales)
        bs = BYTES_PER_ELEMENT[prec] / 4.0
        layers = tuple(
            LayerCost(name=k.name, op=k.op, flops=batch * k.flops, params=k.weight_bytes // 4,  # counted in fp32
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
            extra={
                "kernels": len(kernels),
                "constants": self.constants.to_dict(),
                "device_scales": self.scales.to_dict(),
                **self.source,
                "error_band": self._band(prec, batch, input_px),
                **({"note": f"'{self.target.name}' has no int8 rate above its fp16 rate (its profile gives no "
                            "int8_tensor peak): TensorRT runs an int8 build in fp16 there, and it is predicted so"}
                   if prec != self.precision else {}),
            },
        )

    def _band(self, precision: str, batch: int, input_px: int | None) -> dict[str, Any]:
        band = error_band(self.target, self.runtime, precision, batch)
        if input_px is None:
            return band
        notes = large_input_notes(band, self.target, self.runtime, precision, batch, input_px)
        size = size_range_caveat(band, input_px)
        if notes.get("caveat") or size:
            notes["caveat"] = "; ".join(c for c in (band.get("caveat"), notes.get("caveat"), size) if c)
        return {**band, **notes}

    def _impl(self, model: nn.Module, input_spec: InputSpec) -> Measurement:
        batch = self.batch or input_spec.batch
        tr = trace_ops(model, tuple(input_spec.shape))
        m = self.predict_ops(tr.ops, batch, input_px=max(input_spec.shape[1:]))  # (C, H, W): the larger side
        return dataclasses.replace(m, params=tr.params, weight_bytes=tr.weight_bytes)
