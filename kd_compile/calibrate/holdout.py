"""Held-out evaluation: leave-one-device-out, leave-one-family-out, k-fold over a device's models,
and the error bands per regime drawn from the held-out predictions."""

from __future__ import annotations

import dataclasses
import math
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ..profilers.roofline import Constants, DeviceScales, batch_regime, regime_key
from ..targets.profile import get_target
from .fit import HELD, RIDGE, SEPARATE_MEMORY, TIED, device_scales, fit_on, predict
from .problem import Problem, build_problem
from .tables import FAMILY_LABELS, MeasuredRow, family_of

KFOLD = 5
# Candidate pulls of the device scales toward 1 (``fit.fit_scales``'s ``ridge``), from about what a
# device's rows outweigh at once (0.1) to about unit scales for a device measured on 20 models (30).
RIDGES: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0)


def family_ridge(problem: Problem, train: np.ndarray, constants: Constants, ridges: Sequence[float] = RIDGES
                 ) -> tuple[float, dict[float, float]]:
    """The pull of the device scales toward 1 that best predicts an architecture family the
    scales were not fitted on.

    Leave-one-family-out over the families in ``train`` with ``constants`` fixed: each device's
    scales are fitted on its rows in ``train`` outside the family, and the family's rows are
    predicted. A ridge scores the mean, over (device, runtime, batch regime, table) groups, of the
    group's median absolute log error; the lowest score wins (the smaller ridge on a tie).

    Returns:
        (the chosen ridge, the score of every candidate).
    """
    train = train & problem.fit_mask
    fams = sorted({r.family for r, k in zip(problem.rows, train, strict=True) if k})
    scores: dict[float, float] = {}
    for ridge in ridges:
        err = np.full(len(problem.rows), np.nan)
        for fam in fams:
            held = train & problem.mask(lambda r, f=fam: r.family == f)
            devs = {r.device for r, k in zip(problem.rows, held, strict=True) if k}
            s = device_scales(problem, train & ~held, constants, ridge=ridge, devices=devs)
            err[held] = np.abs(np.log(predict(problem, held, constants, s) / problem.seconds[held]))
        groups: dict[tuple[str, str, str, str], list[float]] = defaultdict(list)
        for i in np.flatnonzero(np.isfinite(err)):
            r = problem.rows[i]
            groups[(r.device, r.runtime, batch_regime(r.batch), r.file)].append(err[i])
        scores[float(ridge)] = float(np.mean([np.median(v) for v in groups.values()])) if groups else math.inf
    best = min(scores, key=lambda k: (scores[k], k))
    return best, scores


def leave_one_device_out(problem: Problem, x0: Constants | None = None, verbose: bool = False,
                         held: Sequence[str] = HELD, tie: Mapping[str, str] | None = TIED
                         ) -> tuple[np.ndarray, dict[str, Constants]]:
    """Predictions of every row by constants fitted without its device (unit scales).

    ``x0`` is the fits' starting point (default :data:`DEFAULT_CONSTANTS`); starting from a fit
    that saw the held-out device would let it leak in, so callers should not. ``held`` and ``tie``
    as in :func:`fit_on` (another model structure, for ``benchmarks/latency_choices.py``).

    Returns:
        (predicted seconds per row, the constants fitted without each device).
    """
    pred = np.full(len(problem.rows), np.nan)
    fits = {}
    for dev in sorted({r.device for r in problem.rows}):
        t0 = time.perf_counter()
        out = problem.mask(lambda r, d=dev: r.device == d)
        fits[dev] = fit_on(problem, ~out, x0, held=held, tie=tie)
        pred[out] = predict(problem, out, fits[dev])
        if verbose:
            print(f"  fit without {dev}: {time.perf_counter() - t0:.0f}s", flush=True)
    return pred, fits


def leave_one_family_out(problem: Problem, x0: Constants | None = None, verbose: bool = False
                         ) -> tuple[np.ndarray, dict[str, Constants], dict[str, dict[str, DeviceScales]],
                                    dict[str, float]]:
    """Predictions of every row by constants and device scales fitted without its family.

    The device scales' pull toward 1 is chosen without the family too (:func:`family_ridge` over
    the other families), as the shipped calibration chooses it over all of them.

    Returns:
        (predicted seconds per row, constants per left-out family, device scales per family,
        the ridge chosen per family).
    """
    pred = np.full(len(problem.rows), np.nan)
    fits, scales, ridges = {}, {}, {}
    for fam in sorted({r.family for r in problem.rows}):
        t0 = time.perf_counter()
        held = problem.mask(lambda r, f=fam: r.family == f)
        fits[fam] = fit_on(problem, ~held, x0)
        ridges[fam], _ = family_ridge(problem, ~held, fits[fam])
        scales[fam] = device_scales(problem, ~held & problem.fit_mask, fits[fam], ridge=ridges[fam])
        pred[held] = predict(problem, held, fits[fam], scales[fam])
        if verbose:
            print(f"  fit without family {fam} (scales' ridge {ridges[fam]:g}): {time.perf_counter() - t0:.0f}s",
                  flush=True)
    return pred, fits, scales, ridges


def kfold_on_device(problem: Problem, device: str, constants: Constants, k: int = KFOLD,
                    separate_memory: bool = SEPARATE_MEMORY, ridge: float = RIDGE,
                    fit: Callable[[np.ndarray], tuple[Constants, dict[str, DeviceScales]]] | None = None
                    ) -> np.ndarray:
    """Held-out predictions of ``device`` 's rows: its scales fitted on k-1 folds of its models
    (``constants`` fixed, fitted without the device; ``ridge`` as in ``fit.fit_scales``), the
    remaining fold predicted. ``fit`` (training mask -> constants and scales) replaces that fit: a
    CPU's, which fits constants of its own too (``fit.fit_cpu``)."""
    on = problem.mask(lambda r: r.device == device)
    specs = sorted({r.spec for r, m in zip(problem.rows, on, strict=True) if m})
    rng = np.random.default_rng(0)
    fold_of = {s: i % k for i, s in enumerate(rng.permutation(specs))}
    pred = np.full(len(problem.rows), np.nan)
    for f in range(min(k, len(specs))):
        test = on & problem.mask(lambda r, f=f: fold_of.get(r.spec) == f)
        train = on & ~test & problem.fit_mask
        if fit is None:
            c, s = constants, device_scales(problem, train, constants, separate_memory, ridge=ridge)
        else:
            c, s = fit(train)
        pred[test] = predict(problem, test, c, s)
    return pred


def _band(ape: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    """Weighted median and 80th percentile of absolute percentage errors."""
    o = np.argsort(ape)
    a, c = ape[o], np.cumsum(w[o]) / w.sum()
    return float(a[np.searchsorted(c, 0.5)]), float(a[min(len(a) - 1, np.searchsorted(c, 0.8))])


def bands(problem: Problem, pred: np.ndarray, mask: np.ndarray, transfer: str, per_device_weight: bool = True
          ) -> dict[str, dict[str, Any]]:
    """Error bands per regime (``runtime/precision/batch-regime``) of the rows in ``mask``.

    With ``per_device_weight`` every device counts equally in the pooled percentiles.
    """
    groups: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(problem.rows):
        if mask[i] and np.isfinite(pred[i]):
            groups[regime_key(r.runtime, r.precision, r.batch)].append(i)
    out = {}
    for key, ix in sorted(groups.items()):
        rows = [problem.rows[i] for i in ix]
        ape = np.abs(pred[ix] / problem.seconds[ix] - 1)
        devs = [r.device for r in rows]
        w = np.array([1.0 / devs.count(d) for d in devs]) if per_device_weight else np.ones(len(ix))
        med, p80 = _band(ape, w)
        dev_set, files = sorted(set(devs)), sorted({r.file for r in rows})
        batches = sorted({r.batch for r in rows})
        count = Counter(family_of(spec) for spec in {r.spec for r in rows})
        families = sorted(count, key=lambda f: (-count[f], f))  # most models first
        n_models = sum(count.values())
        kinds = ", ".join(FAMILY_LABELS.get(f, f) for f in families)
        what = "held-out" if transfer == "fitted on this device" else "leave-one-device-out over"
        out[key] = {
            "median_ape": round(med, 4), "p80_ape": round(p80, 4), "n": len(ix),
            "basis": f"{what} {', '.join(dev_set)} ({n_models} models: {kinds}; batch {'/'.join(map(str, batches))}"
                     + (", 5-fold over models" if transfer == "fitted on this device" else ", devices weighted equally")
                     + ")",
            "transfer": transfer, "files": files, "devices": dev_set, "batches": batches, "families": families,
        }
    return out


def _proxy_bands(b: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Add bands for regimes without measurements from the closest measured regime, marked proxy.

    TensorRT at large batch: no table measures it; the eager large-batch band stands for it
    (kernels are compute/memory-bound there; fusion differences are not covered). Eager fp16 at
    batch 1 without a device's own rows: the eager fp32 batch-1 band (host-bound either way).
    """
    out = dict(b)
    for prec in ("fp16", "fp32"):
        src = b.get(f"torch/{prec}/large") or b.get(f"torch/{'fp32' if prec == 'fp16' else 'fp16'}/large")
        if f"tensorrt/{prec}/large" not in out and src:
            out[f"tensorrt/{prec}/large"] = {**src, "transfer": f"proxy: no TensorRT large-batch tables; eager "
                                             f"large-batch band; {src['transfer']}"}
        src1 = b.get(f"torch/{'fp32' if prec == 'fp16' else 'fp16'}/batch1")
        if f"torch/{prec}/batch1" not in out and src1:
            out[f"torch/{prec}/batch1"] = {**src1, "transfer": f"proxy: no eager {prec} batch-1 tables for this "
                                           f"device; {src1['transfer']}"}
    return out


def fit_compile_scale(problem: Problem, train: np.ndarray, fits: Mapping[str, Constants],
                      scales: Mapping[str, DeviceScales] | None = None) -> float:
    """``s_compile`` fitted on the ``torch.compile`` rows in ``train`` alone, every other constant
    held: each row predicted with ``fits[device]`` and the device's own scales (``scales``, default
    1), so that ``s_compile`` is ``torch.compile``'s time against eager PyTorch's as calibrated on
    the same GPU; robust least squares on log latency, as the other constants are fitted."""
    from scipy.optimize import least_squares

    m = train & problem.mask(lambda r: r.runtime == "inductor" and r.device in fits)
    if not m.any():
        raise ValueError("no torch.compile rows to fit s_compile on")
    devices = sorted({r.device for r, k in zip(problem.rows, m, strict=True) if k})
    parts = [(m & problem.mask(lambda r, d=d: r.device == d), fits[d], dict(scales or {})) for d in devices]
    y = np.concatenate([np.log(problem.seconds[on]) for on, _, _ in parts])

    def resid(z: np.ndarray) -> np.ndarray:
        pred = [predict(problem, on, dataclasses.replace(c, s_compile=math.exp(z[0])), sc) for on, c, sc in parts]
        return np.log(np.concatenate(pred)) - y

    r = least_squares(resid, np.zeros(1), bounds=(np.log(0.05), np.log(20.0)), diff_step=1e-3, loss="soft_l1",
                      f_scale=0.3)
    return round(math.exp(float(r.x[0])), 5)


def check_bands(rows: Sequence[MeasuredRow], fits: Mapping[str, Constants],
                scales: Mapping[str, DeviceScales] | None = None, verbose: bool = False, k: int = KFOLD
                ) -> tuple[float, dict[str, dict[str, dict[str, Any]]], dict[str, dict[str, Any]]]:
    """``s_compile`` and its bands from the tables no fit of the other constants reads
    (``tables.CHECK_TABLES``, ``torch.compile``).

    ``s_compile`` is fitted on them with each device's constants fitted without it (``fits``, from
    :func:`leave_one_device_out`) and its own scales (``scales``; :func:`fit_compile_scale`). Each
    row is predicted with ``s_compile`` fitted on the other k-1 folds of the table's models, twice:
    as its device left out would be (``fits[device]``, unit scales: the bands per device kind, for
    a GPU without measurements), and with the device's own scales (the band of a GPU whose own eager
    tables calibrate it). Rows of devices not in ``fits`` are skipped.

    Returns:
        ``s_compile`` fitted on every row, the bands per device kind, and the own-calibration bands
        (1, ``{}``, ``{}`` without rows).
    """
    rows = [r for r in rows if r.device in fits]
    if not rows:
        return 1.0, {}, {}
    problem = build_problem(rows, verbose=verbose)
    everything = np.ones(len(problem.rows), bool)
    specs = sorted({r.spec for r in problem.rows})
    rng = np.random.default_rng(0)
    fold_of = {s: i % k for i, s in enumerate(rng.permutation(specs))}
    pred, pred_own = np.full(len(problem.rows), np.nan), np.full(len(problem.rows), np.nan)
    for f in range(min(k, len(specs))):
        test = problem.mask(lambda r, f=f: fold_of[r.spec] == f)
        s_compile = fit_compile_scale(problem, ~test, fits, scales)
        for dev in sorted({r.device for r, t in zip(problem.rows, test, strict=True) if t}):
            on = test & problem.mask(lambda r, d=dev: r.device == d)
            c = dataclasses.replace(fits[dev], s_compile=s_compile)
            pred[on] = predict(problem, on, c)
            pred_own[on] = predict(problem, on, c, dict(scales or {}))
    kinds = {d: get_target(d).kind for d in {r.device for r in problem.rows}}
    how = f"s_compile fitted on the other {k - 1} of {k} folds of the torch.compile table's models"
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for kind in sorted(set(kinds.values())):
        b = bands(problem, pred, problem.mask(lambda r, k=kind: kinds[r.device] == k), "device left out")
        out[kind] = {key: {**band, "transfer": f"device left out; {how}"} for key, band in b.items()}
    own = {key: {**band, "transfer": f"the device's own eager calibration; {how}"}
           for key, band in bands(problem, pred_own, everything, "fitted on this device", per_device_weight=False
                                  ).items()}
    return fit_compile_scale(problem, everything, fits, scales), out, own


def transfer_bands(problem: Problem, pred_lodo: np.ndarray) -> dict[str, dict[str, dict[str, Any]]]:
    """Leave-one-device-out bands per device kind (``gpu``: discrete, ``edge-gpu``: Jetson).

    A kind's band in a regime comes from that kind's held-out devices; a regime the kind has no
    measurements in takes the closest measured regime of the same kind (``_proxy_bands``), then
    the band pooled over all devices, each marked in ``transfer``.
    """
    kinds = {d: get_target(d).kind for d in {r.device for r in problem.rows}}
    everything = bands(problem, pred_lodo, np.ones(len(problem.rows), bool), "device left out")
    out = {}
    for kind in ("gpu", "edge-gpu"):
        own = _proxy_bands(bands(problem, pred_lodo, problem.mask(lambda r, k=kind: kinds[r.device] == k),
                                 "device left out"))
        for key, band in everything.items():
            if key not in own:
                own[key] = {**band, "transfer": f"device left out (no {kind} device measured in this regime: "
                                                f"pooled over all devices)"}
        out[kind] = _proxy_bands(own)
    return out
