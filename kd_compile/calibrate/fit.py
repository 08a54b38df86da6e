"""The least-squares fits: device-independent :class:`Constants` and per-device :class:`DeviceScales`.

Robust least squares on log latency, every (device, runtime, batch regime, table) group
weighted equally (:func:`group_weights`).
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import numpy as np

from ..profilers.roofline import (
    CONSTANT_NAMES,
    DEFAULT_CONSTANTS,
    DEV_COLUMNS,
    NODE_REF_NM,
    Constants,
    DeviceScales,
    KernelTable,
    batch_regime,
    on_tensor_cores,
    row_seconds,
)
from .problem import Problem
from .tables import MeasuredRow


def group_weights(rows: Sequence[MeasuredRow]) -> np.ndarray:
    """Weights giving each (device, runtime, batch regime, table) group the same total weight."""
    groups: dict[tuple[str, str, str, str], list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        groups[(r.device, r.runtime, batch_regime(r.batch), r.file)].append(i)
    w = np.zeros(len(rows))
    for ix in groups.values():
        w[ix] = 1.0 / len(ix)
    return w / w.mean() if len(w) else w


# Bounds of the fitted constants (physical ranges; the fit runs in log space).
_LOWER = {"e_tc": 1e-3, "e_cuda": 1e-3, "e_dw": 1e-4, "e_mem": 0.05, "c_half": 0.01, "t0_us": 0.01,
          "h_lib_us": 0.1, "h_pw_us": 0.1, "h_kernel_us": 0.1, "edge": 0.3, "t0_graph_us": 0.01,
          "c_half_graph": 0.01, "tc_gflop_per_j": 10.0, "s_compile": 0.05,
          "node_beta": 0.01}
_UPPER = {"e_tc": 1.0, "e_cuda": 1.0, "e_dw": 1.0, "e_mem": 1.0, "c_half": 4096.0, "t0_us": 100.0,
          "h_lib_us": 1000.0, "h_pw_us": 1000.0, "h_kernel_us": 100.0, "edge": 30.0, "t0_graph_us": 100.0,
          "c_half_graph": 4096.0, "tc_gflop_per_j": 1e5, "s_compile": 20.0,
          "node_beta": 4.0}


# Constants every fit holds at their ``DEFAULT_CONSTANTS`` value (docs/latency-predictor.md):
# ``t0_us``, an eager op's fixed GPU cost, which the eager tables cannot tell from the host cost of
# pointwise ops; ``h_kernel_us``, a graph runtime's host cost per kernel, which the TensorRT
# tables cannot tell from ``t0_graph_us``; and ``c_half``, the channel half-saturation, which
# fitted runs to 16.4 with ``c_half_graph`` tied to it, or to 10.7 beside a ``c_half_graph`` of its
# own, and leaves the devices' own 5-fold error no better (``benchmarks/latency_choices.py``).
# ``node_beta``, the power cap's growth with a finer process node, held at 1 (a joule buys FLOPs in
# proportion to 1 / the node, as switched capacitance shrinks with it at a near-constant voltage):
# only the RTX 4090 binds the cap on a node other than 12 nm in the measured tables, so a fitted one is
# whatever the fit without that board guesses (0.17). The nested leave-one-device-out over the six
# power-capped devices (``benchmarks/latency_choices.py``) chose it held at 1 for four test devices,
# fitted for one and no node term for one.
HELD: tuple[str, ...] = ("t0_us", "h_kernel_us", "c_half", "node_beta")
# Constants that take another's value in every fit: graph runtimes' channel half-saturation is the
# eager one (held at 16). Fitted apart, ``c_half_graph`` lost the nested leave-one-device-out
# comparison over the four TensorRT devices on three of them (``benchmarks/latency_choices.py``).
TIED: Mapping[str, str] = MappingProxyType({"c_half_graph": "c_half"})
# A device's memory time takes its compute scale rather than a scale of its own: chosen on the
# devices' own 5-fold error over their models (``benchmarks/latency_choices.py``). A memory scale of
# its own won that comparison narrowly (8.82% against 8.84% mean median error) until tensor-core
# throughput got its power cap, and lost it after (8.32% against 8.11%).
SEPARATE_MEMORY = False
# The pull of device scales toward 1 where no calibration chose one (``fit_scales``); the shipped
# calibration records the value chosen by leave-one-family-out (``holdout.family_ridge``).
RIDGE = 0.1


def quality(pred: np.ndarray, meas: np.ndarray) -> dict[str, float]:
    """n, Spearman rank correlation, median / 80th-percentile / mean absolute % error (fractions),
    share within 35%, RMSE of log ratio."""
    from scipy.stats import spearmanr

    pred, meas = np.asarray(pred, float), np.asarray(meas, float)
    ape = np.abs(pred / meas - 1.0)
    return {
        "n": len(meas),
        "spearman": float(spearmanr(pred, meas).statistic) if len(meas) > 2 else float("nan"),
        "median_ape": float(np.median(ape)) if len(ape) else float("nan"),
        "p80_ape": float(np.percentile(ape, 80)) if len(ape) else float("nan"),
        "mean_ape": float(np.mean(ape)) if len(ape) else float("nan"),
        "within_35": float(np.mean(ape <= 0.35)) if len(ape) else float("nan"),
        "rmse_log": float(np.sqrt(np.mean(np.log(pred / meas) ** 2))) if len(ape) else float("nan"),
    }


def fit_constants(
    table: KernelTable,
    measured_s: np.ndarray,
    weights: np.ndarray | None = None,
    x0: Constants | None = None,
    fixed: Sequence[str] = (),
    max_nfev: int = 300,
    tie: Mapping[str, str] | None = None,
) -> tuple[Constants, dict[str, float]]:
    """Robust least-squares fit of the constants on log latency (parameters in log space).

    Args:
        table: kernels of M rows (with their device terms and scales).
        measured_s: measured seconds per batch, shape (M,).
        weights: per-row weights (default 1).
        x0: starting point (default :data:`DEFAULT_CONSTANTS`).
        fixed: names of constants held at ``x0``.
        max_nfev: evaluation budget.
        tie: constants that take another's value rather than their own (``{"c_half_graph":
            "c_half"}``: one channel penalty for every runtime), to compare model structures.

    Returns:
        The fitted constants and the fit quality on the fitting rows. A constant the rows cannot
        identify (no tensor-core, CUDA-core, depthwise, eager or graph-runtime or Jetson rows) is
        held at ``x0``.
    """
    from scipy.optimize import least_squares

    start = (x0 or DEFAULT_CONSTANTS).vector()
    col = {name: i for i, name in enumerate(DEV_COLUMNS)}
    dev = table.dev[table.row]
    gemm = np.isin(table.cls, (0, 2, 3)) & (table.flops > 0)
    tc = on_tensor_cores(table.cls, dev[:, col["tensor_cores"]], dev[:, col["tc_conv_only"]])  # per kernel
    per_op, edge = table.dev[:, col["per_op_host"]] > 0, table.dev[:, col["edge"]] > 0  # per row
    present = {
        "e_tc": bool(np.any(gemm & tc)),
        "e_cuda": bool(np.any(gemm & ~tc)),
        "e_dw": bool(np.any((table.cls == 1) & (table.flops > 0))),
        "h_lib_us": bool(np.any(per_op)),
        "h_pw_us": bool(np.any(per_op)),
        "h_kernel_us": bool(np.any(~per_op)),
        "t0_graph_us": bool(np.any(~per_op)),
        "c_half_graph": bool(np.any(~per_op)),
        "edge": bool(np.any(edge)) and bool(np.any(~edge)),
        "tc_gflop_per_j": bool(np.any(gemm & tc & (dev[:, col["tdp_w"]] > 0))),
        "s_compile": bool(np.any(table.dev[:, col["compiled"]] > 0)),
        "node_beta": bool(np.any(gemm & tc & (dev[:, col["tdp_w"]] > 0)
                                 & (dev[:, col["process_nm"]] > 0) & (dev[:, col["process_nm"]] != NODE_REF_NM))),
    }
    tied = [(CONSTANT_NAMES.index(a), CONSTANT_NAMES.index(b)) for a, b in (tie or {}).items()]
    free = [i for i, n in enumerate(CONSTANT_NAMES)
            if n not in fixed and n not in (tie or {}) and present.get(n, True)]
    lo = np.log([_LOWER[CONSTANT_NAMES[i]] for i in free])
    hi = np.log([_UPPER[CONSTANT_NAMES[i]] for i in free])
    y = np.log(np.asarray(measured_s, float))
    sw = np.sqrt(np.ones_like(y) if weights is None else np.asarray(weights, float))

    def full(z: np.ndarray) -> np.ndarray:
        v = start.copy()
        v[free] = np.exp(z)
        for a, b in tied:
            v[a] = v[b]
        return v

    def resid(z: np.ndarray) -> np.ndarray:
        return sw * (np.log(row_seconds(table, full(z))) - y)

    z0 = np.clip(np.log(np.maximum(start[free], 1e-12)), lo + 1e-6, hi - 1e-6)

    def solve(z: np.ndarray) -> Any:
        return least_squares(resid, z, bounds=(lo, hi), diff_step=1e-3, max_nfev=max_nfev, loss="soft_l1",
                             f_scale=0.3)

    r = solve(z0)
    # A constant can end where no residual depends on it (a power cap that binds on no kernel): the
    # solver has no gradient to come back by. Restart once with those constants at their start; keep
    # the lower robust cost.
    flat = _flat(resid, r.x)
    if flat:
        z1 = r.x.copy()
        z1[flat] = z0[flat]
        r2 = solve(z1)
        if r2.cost < r.cost:
            r = r2
    c = Constants.from_vector(full(r.x))
    return c, quality(row_seconds(table, c), np.asarray(measured_s, float))


def _scale_columns(rows: Sequence[MeasuredRow], scales: dict[str, DeviceScales]
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    s = [scales.get(r.device, DeviceScales()) for r in rows]
    return (np.array([x.roofline_for(r.runtime) for x, r in zip(s, rows, strict=True)]),
            np.array([x.fixed_for(r.runtime) for x, r in zip(s, rows, strict=True)]),
            np.array([x.memory_for(r.runtime) for x, r in zip(s, rows, strict=True)]))


def fit_scales(
    table: KernelTable, measured_s: np.ndarray, rows: Sequence[MeasuredRow], constants: Constants,
    ridge: float = RIDGE, separate_memory: bool = SEPARATE_MEMORY,
) -> DeviceScales:
    """One device's scales (compute, memory and fixed costs, each per runtime) with the constants
    fixed.

    Robust least squares on log latency with a pull of every log(scale) toward 0 (``ridge``: the
    penalty is ``ridge x log(scale)`` beside one residual per row, each row weighing 1 on average),
    so a handful of rows cannot run a scale away, and a scale the device's rows say little about
    (the compute scale of a device measured only on host- and memory-bound networks) stays near 1.
    The calibration chooses ``ridge`` by how well the scales predict an architecture family they
    were not fitted on (:func:`kd_compile.calibrate.holdout.family_ridge`).
    ``separate_memory``: a memory scale of its own beside the compute scale (default
    ``SEPARATE_MEMORY``: no, the compute scale serves both; the other is kept to compare structures).
    """
    from scipy.optimize import least_squares

    runtimes = sorted({r.runtime for r in rows})
    y = np.log(np.asarray(measured_s, float))
    rt_idx = np.array([runtimes.index(r.runtime) for r in rows])
    sw = np.sqrt(group_weights(rows))

    k = len(runtimes)
    m0 = 2 * k if separate_memory else 0  # where the memory scales start in z

    def scaled(z: np.ndarray) -> KernelTable:
        return table.with_scales(np.exp(z[:k])[rt_idx], np.exp(z[k:2 * k])[rt_idx], np.exp(z[m0:m0 + k])[rt_idx])

    def resid(z: np.ndarray) -> np.ndarray:
        return np.concatenate([sw * (np.log(row_seconds(scaled(z), constants)) - y), ridge * z])

    r = least_squares(resid, np.zeros((3 if separate_memory else 2) * k), bounds=(np.log(0.05), np.log(20.0)),
                      diff_step=1e-3, loss="soft_l1", f_scale=0.3)
    def per_runtime(z: np.ndarray) -> dict[str, float]:
        return {rt: round(math.exp(v), 5) for rt, v in zip(runtimes, z, strict=True)}

    def geomean(z: np.ndarray) -> float:
        return round(math.exp(float(np.mean(z))), 5)

    roof, fixed = r.x[:k], r.x[k:2 * k]
    if not separate_memory:
        return DeviceScales(geomean(roof), per_runtime(fixed), per_runtime(roof))
    mem = r.x[2 * k:]
    return DeviceScales(geomean(roof), per_runtime(fixed), per_runtime(roof), geomean(mem), per_runtime(mem))


def predict(problem: Problem, mask: np.ndarray, constants: Constants,
            scales: dict[str, DeviceScales] | None = None) -> np.ndarray:
    """Predicted seconds of the rows in ``mask``, with per-device scales (default 1)."""
    rows = [r for r, m in zip(problem.rows, mask, strict=True) if m]
    g, h, m = _scale_columns(rows, scales or {})
    return row_seconds(problem.table.subset(mask).with_scales(g, h, m), constants)


def _flat(resid: Callable[[np.ndarray], np.ndarray], z: np.ndarray, step: float = math.log(1.01)) -> list[int]:
    """The parameters of ``z`` that a 1% change moves no residual of (a flat region of the fit)."""
    base = resid(z)
    out = []
    for j in range(len(z)):
        moved = z.copy()
        moved[j] += step
        if np.array_equal(resid(moved), base):
            out.append(j)
    return out


def fit_on(problem: Problem, train: np.ndarray, x0: Constants | None = None, max_nfev: int = 300,
           held: Sequence[str] = HELD, tie: Mapping[str, str] | None = TIED) -> Constants:
    """Constants fitted on the rows in ``train`` (and in ``problem.fit_mask``), unit scales; the
    ``held`` constants (default ``HELD``) keep their ``DEFAULT_CONSTANTS`` value whatever ``x0``
    says; ``tie`` (default ``TIED``; ``None``: none) as in :func:`fit_constants`."""
    m = train & problem.fit_mask
    rows = [r for r, k in zip(problem.rows, m, strict=True) if k]
    start = dataclasses.replace(x0 or DEFAULT_CONSTANTS, **{k: getattr(DEFAULT_CONSTANTS, k) for k in held})
    c, _ = fit_constants(problem.table.subset(m), problem.seconds[m], group_weights(rows), x0=start,
                         fixed=held, max_nfev=max_nfev, tie=tie)
    return c


# Constants a CPU's own table fits beside its scales (``fit_cpu``; ``kd-compile calibrate`` on a
# CPU target): a depthwise convolution, which a GPU runs at a few percent of its peak (``e_dw``
# 0.056 in the all-device fit), reaches a larger share on a CPU. Fitted there, the ``cpu`` target's
# own table's held-out error falls from 13.1% to 9.7% median (``docs/latency-predictor.md``, "The
# cpu target"); every other constant stays the all-device fit's, and the CPU's scales take the rest.
CPU_FITTED: tuple[str, ...] = ("e_dw",)


def fit_cpu(problem: Problem, train: np.ndarray, constants: Constants, device: str, ridge: float = RIDGE,
            rounds: int = 3) -> tuple[Constants, dict[str, DeviceScales]]:
    """A CPU's own fit on the rows in ``train``: its scales (``ridge`` as in :func:`fit_scales`) and
    the constants ``CPU_FITTED``, the rest held at ``constants``; the two fitted in turn, ``rounds``
    times, from the scales of ``constants``."""
    s = device_scales(problem, train, constants, ridge=ridge, devices=[device])
    fixed = [n for n in CONSTANT_NAMES if n not in CPU_FITTED]
    rows = [r for r, k in zip(problem.rows, train, strict=True) if k]
    for _ in range(rounds):
        g, h, m = _scale_columns(rows, s)
        constants, _ = fit_constants(problem.table.subset(train).with_scales(g, h, m), problem.seconds[train],
                                     x0=constants, fixed=fixed)
        s = device_scales(problem, train, constants, ridge=ridge, devices=[device])
    return constants, s


def device_scales(problem: Problem, train: np.ndarray, constants: Constants,
                  separate_memory: bool = SEPARATE_MEMORY,
                  ridge: float = RIDGE, devices: Sequence[str] | None = None) -> dict[str, DeviceScales]:
    """Scales of every device with rows in ``train`` (or of those in ``devices``), fitted on those
    rows with ``constants`` (``ridge`` as in :func:`fit_scales`)."""
    out = {}
    for dev in sorted({r.device for r, k in zip(problem.rows, train, strict=True) if k}):
        if devices is not None and dev not in devices:
            continue
        m = train & problem.mask(lambda r, d=dev: r.device == d)
        rows = [r for r, k in zip(problem.rows, m, strict=True) if k]
        out[dev] = fit_scales(problem.table.subset(m), problem.seconds[m], rows, constants,
                              ridge=ridge, separate_memory=separate_memory)
    return out
