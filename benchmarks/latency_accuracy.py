"""How well does the latency predictor size and rank models on a device, or a family, it was not fitted on?

One run prints, side by side, for the predictor and three baselines, the median absolute
percentage error (APE), the share of models within 35% and Spearman's rho (median and minimum
over (device, table, batch) groups) against every measured table in ``shared/data/latency`` and
the tables the package ships (``kd_compile/calibrate/data``: torch2trt's Jetson Nano):

* **leave-one-device-out** (LODO): the constants are fitted without the device (unit device
  scales: a device without measurements), then the device's rows are predicted;
* **leave-one-family-out** (LOFO): constants and device scales are fitted without an
  architecture family (NAS-Bench-201, FBNet, Accel-NASBench, ResNet-like, RegNet, mobile nets,
  EfficientNet, ViT-like, ConvNeXt, DenseNet, VGG-like, other), then the family is predicted.
  The device scales' pull toward 1 (``ridge``) is chosen without the family too, by
  leave-one-family-out over the other families (``calibrate.family_ridge``), as the shipped
  calibration chooses it over all of them.

Baselines (each fitted on the same training rows as the predictor, per runtime and batch regime):

* ``flops``: latency = k x batch x FLOPs / peak; k is the median of measured x peak / (batch x
  FLOPs) over the training rows (device-weighted), peak the target's GEMM peak;
* ``params``: the same with parameters;
* ``nearest-gpu``: the predictor's prediction on the nearest *other* measured GPU (closest in
  log peak and log bandwidth, same runtime and batch regime; its constants and device scales
  fitted on the training rows), scaled by the ratio of peaks.

Rows: eager PyTorch (``torch``) and TensorRT, at batch 1, 32, 64 (HELP), 128 (Accel-NASBench),
256 (HELP) and 512-1024 (timm). NAS spaces are sampled (``--nas`` architectures each, seed 0;
fits use 100 of them). Op counts come from ``kd_compile/targets/calibration/layer_costs.json``.
Leave-one-device-out is also re-run with the fits on 50, 150 and 200 NAS architectures per table
(``--nas-fit-grid``), to show how much the headline figures depend on that share.
Figures go to ``benchmarks/results/latency_accuracy.json``. ``--write-calibration`` also rewrites
the shipped calibration files from the same fits (``kd_compile.calibrate.calibrate_all``).

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/latency_accuracy.py [--write-calibration]``
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kd_compile.calibrate import (  # noqa: E402
    DEFAULT_DATA_DIR,
    NAS_FIT,
    NAS_SAMPLE,
    Problem,
    build_problem,
    calibrate_all,
    device_scales,
    family_ridge,
    fit_on,
    group_weights,
    leave_one_device_out,
    leave_one_family_out,
    load_measurements,
    quality,
)
from kd_compile.profilers.roofline import (  # noqa: E402
    Constants,
    DeviceScales,
    DeviceTerms,
    batch_regime,
    device_columns,
    row_seconds,
)
from kd_compile.targets import get_target  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "latency_accuracy.json"
METHODS = ("predictor", "flops", "params", "nearest-gpu")


def _peaks(problem: Problem) -> np.ndarray:
    return problem.table.dev[:, 0]


def _regime(r: Any) -> tuple[str, str]:
    return (r.runtime, batch_regime(r.batch))


def _wmedian(x: np.ndarray, w: np.ndarray) -> float:
    o = np.argsort(x)
    c = np.cumsum(w[o]) / w[o].sum()
    return float(x[o][np.searchsorted(c, 0.5)])


def proportional(problem: Problem, size: np.ndarray, train: np.ndarray, test: np.ndarray, same_device: bool
                 ) -> np.ndarray:
    """Baseline latency = k x batch x size / peak, k fitted per regime on the training rows.

    With ``same_device`` the constant comes from the test row's own device when it has training
    rows in the regime (leave-one-family-out), else from every training device.
    """
    peak = _peaks(problem)
    kappa = np.log(problem.seconds * peak / (problem.table.batch * np.maximum(size, 1.0)))
    w = group_weights(problem.rows)
    out = np.full(len(problem.rows), np.nan)
    cache: dict[tuple[str, ...], float] = {}
    for i in np.flatnonzero(test):
        r = problem.rows[i]
        key = (*_regime(r), r.device if same_device else "")
        if key not in cache:
            m = train & problem.mask(lambda x, k=key: _regime(x) == k[:2] and (not k[2] or x.device == k[2]))
            if not m.any():
                m = train & problem.mask(lambda x, k=key: _regime(x) == k[:2])
            cache[key] = _wmedian(kappa[m], w[m]) if m.any() else float("nan")
        out[i] = np.exp(cache[key]) * problem.table.batch[i] * max(size[i], 1.0) / peak[i]
    return out


def _nearest(problem: Problem, device: str, regime: tuple[str, str], allowed: set[str]) -> str | None:
    t = get_target(device)
    best, dist = None, float("inf")
    for d in sorted(allowed - {device}):
        if not any(r.device == d and _regime(r) == regime for r in problem.rows):
            continue
        o = get_target(d)
        x = abs(np.log(o.peak_for("fp16") / t.peak_for("fp16"))) + abs(np.log(o.memory_bandwidth_gbs
                                                                              / t.memory_bandwidth_gbs))
        if x < dist:
            best, dist = d, x
    return best


def nearest_gpu(problem: Problem, test: np.ndarray, constants: Constants, scales: dict[str, DeviceScales],
                allowed: set[str]) -> np.ndarray:
    """The predictor on the nearest other measured GPU, scaled by the ratio of GEMM peaks."""
    out = np.full(len(problem.rows), np.nan)
    idx = np.flatnonzero(test)
    if not len(idx):
        return out
    sub = problem.table.subset(test)
    dev = sub.dev.copy()
    ratio = np.full(len(idx), np.nan)
    for j, i in enumerate(idx):
        r = problem.rows[i]
        near = _nearest(problem, r.device, _regime(r), allowed)
        if near is None:
            continue
        d = DeviceTerms.of(get_target(near), r.precision, r.runtime)
        s = scales.get(near, DeviceScales())
        dev[j] = [*device_columns(d), s.roofline_for(r.runtime), s.fixed_for(r.runtime), s.memory_for(r.runtime)]
        ratio[j] = d.peak_tc / problem.table.dev[i, 0]
    p = row_seconds(dataclasses.replace(sub, dev=dev), constants)
    out[idx] = p * ratio
    return out


def summarize(problem: Problem, preds: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Per (runtime, batch) and method: pooled APE (devices weighted equally), Spearman per group."""
    by: dict[tuple[str, int], list[int]] = defaultdict(list)
    for i, r in enumerate(problem.rows):
        by[(r.runtime, r.batch if r.batch <= 256 else 512)].append(i)
    out = []
    for (rt, b), ix in sorted(by.items(), key=lambda kv: (kv[0][0] != "tensorrt", kv[0])):
        ix = np.array(ix)
        rows = [problem.rows[i] for i in ix]
        devs = [r.device for r in rows]
        w = np.array([1.0 / devs.count(d) for d in devs])
        groups: dict[tuple[str, str], list[int]] = defaultdict(list)
        for j, r in enumerate(rows):
            groups[(r.device, r.file)].append(j)
        for name, p in preds.items():
            ok = np.isfinite(p[ix])
            if not ok.any():
                continue
            ape = np.abs(p[ix] / problem.seconds[ix] - 1)
            rhos = {f"{d}|{f}": quality(p[ix][g], problem.seconds[ix][g])["spearman"]
                    for (d, f), g in groups.items() if len(g) > 2 and np.all(ok[g])}
            finite = [v for v in rhos.values() if np.isfinite(v)]
            out.append({
                "runtime": rt, "batch": "512-1024" if b == 512 else str(b), "method": name,
                "n": int(ok.sum()), "devices": sorted(set(devs)),
                "median_ape": _wmedian(ape[ok], w[ok]),
                "within_35": float(np.sum(w[ok] * (ape[ok] <= 0.35)) / np.sum(w[ok])),
                "spearman_median": float(np.median(finite)) if finite else float("nan"),
                "spearman_min": float(np.min(finite)) if finite else float("nan"),
                "spearman": rhos,
            })
    return out


def per_group(problem: Problem, preds: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Per (device, runtime, batch, table) group and method: n, median APE, within 35%, Spearman."""
    groups: dict[tuple[str, str, int, str], list[int]] = defaultdict(list)
    for i, r in enumerate(problem.rows):
        groups[r.group].append(i)
    out = []
    for (dev, rt, b, f), ix in sorted(groups.items()):
        row: dict[str, Any] = {"device": dev, "runtime": rt, "batch": b, "file": f, "n": len(ix)}
        for name, p in preds.items():
            if np.all(np.isfinite(p[ix])):
                q = quality(p[ix], problem.seconds[ix])
                row[name] = {k: q[k] for k in ("median_ape", "within_35", "spearman")}
        out.append(row)
    return out


def _fmt(s: list[dict[str, Any]], title: str) -> str:
    lines = [title, f"  {'runtime':<9} {'batch':>8}  {'method':<12} {'n':>5}  {'median APE':>10}  {'<=35%':>6}  "
             f"{'rho med':>7}  {'rho min':>7}  devices"]
    last = None
    for r in s:
        key = (r["runtime"], r["batch"])
        if key != last and last is not None:
            lines.append("")
        last = key
        lines.append(f"  {r['runtime']:<9} {r['batch']:>8}  {r['method']:<12} {r['n']:>5}  "
                     f"{100 * r['median_ape']:>9.1f}%  {100 * r['within_35']:>5.0f}%  {r['spearman_median']:>7.3f}  "
                     f"{r['spearman_min']:>7.3f}  {','.join(r['devices']) if r['method'] == 'predictor' else ''}")
    return "\n".join(lines)


def trt_misses(problem: Problem, pred: np.ndarray, tol: float = 0.35) -> list[dict[str, Any]]:
    """The TensorRT batch-1 rows whose held-out prediction (device or family left out, as ``pred``
    was made) misses by more than ``tol`` (what the README lists by model), by device, then from
    the most over-predicted down."""
    out = []
    for r, p, s in zip(problem.rows, pred, problem.seconds, strict=True):
        if r.runtime == "tensorrt" and r.batch == 1 and np.isfinite(p) and abs(p / s - 1.0) > tol:
            out.append({"device": r.device, "spec": r.spec, "precision": r.precision, "file": r.file,
                        "ratio": float(p / s)})  # fmt: skip
    return sorted(out, key=lambda m: (m["device"], -m["ratio"], m["spec"]))


def _print_misses(misses: list[dict[str, Any]], left_out: str) -> None:
    print(f"\nTensorRT batch 1 with the {left_out} left out, outside 35% (predicted / measured):")
    for m in misses:
        print(f"  {m['device']:<18} {m['spec']:<48} x{m['ratio']:.2f}")


def bars(lodo: list[dict[str, Any]], lofo: list[dict[str, Any]], package_tables: Sequence[str] = ()) -> list[str]:
    """The acceptance checks of the issue, evaluated on the summaries. The eager rank bar is also
    given without the groups of ``package_tables`` (tables the package ships beside the shared folder
    the issue named), each named, so that a table added to the fits shows what it moves."""
    out = []
    for name, s in (("LODO", lodo), ("LOFO", lofo)):
        trt = {r["method"]: r for r in s if r["runtime"] == "tensorrt" and r["batch"] == "1"}
        if "predictor" in trt:
            p = trt["predictor"]
            beat = all(p["median_ape"] < v["median_ape"] for k, v in trt.items() if k != "predictor")
            out.append(f"{name} TensorRT batch 1: {100 * p['within_35']:.0f}% of models within 35% (bar 80%): "
                       f"{'PASS' if p['within_35'] >= 0.8 else 'FAIL'}; median APE {100 * p['median_ape']:.1f}% "
                       f"vs baselines " + ", ".join(f"{k} {100 * v['median_ape']:.1f}%" for k, v in trt.items()
                                                   if k != "predictor")
                       + f": {'PASS' if beat else 'FAIL'}")
    for r in lodo:
        if r["runtime"] == "torch" and r["batch"] in ("32", "64") and r["method"] == "predictor":
            out.append(f"LODO eager batch {r['batch']}: Spearman min {r['spearman_min']:.3f} / median "
                       f"{r['spearman_median']:.3f} over {len(r['spearman'])} device x table groups (bar 0.95): "
                       f"{'PASS' if r['spearman_min'] >= 0.95 else 'FAIL (min)'}"
                       + "".join(f"\n    {k}: {v:.3f}" for k, v in sorted(r["spearman"].items())))
            shared = [v for k, v in r["spearman"].items() if k.split("|", 1)[1] not in package_tables]
            own = sorted({k.split("|", 1)[1] for k in r["spearman"]} & set(package_tables))
            if own and shared:
                out.append(f"LODO eager batch {r['batch']} without {', '.join(own)}: "
                           f"Spearman min {min(shared):.3f} over {len(shared)} groups (bar 0.95): "
                           f"{'PASS' if min(shared) >= 0.95 else 'FAIL (min)'}")
    return out


def _lodo_headline(problem: Problem, pred: np.ndarray, summary: list[dict[str, Any]], nas_fit: int
                   ) -> dict[str, Any]:
    trt = next(r for r in summary if r["runtime"] == "tensorrt" and r["batch"] == "1" and r["method"] == "predictor")
    eager = {r["batch"]: r for r in summary if r["runtime"] == "torch" and r["method"] == "predictor"}
    by_dev = {}
    for dev in trt["devices"]:
        ix = problem.mask(lambda r, d=dev: r.device == d and r.runtime == "tensorrt" and r.batch == 1)
        by_dev[dev] = quality(pred[ix], problem.seconds[ix])["within_35"]
    return {"nas_fit": nas_fit, "tensorrt_within_35": trt["within_35"], "tensorrt_median_ape": trt["median_ape"],
            "tensorrt_within_35_by_device": by_dev, "eager_b32_spearman_min": eager["32"]["spearman_min"],
            "eager_b64_spearman_min": eager["64"]["spearman_min"]}


def nas_fit_sensitivity(problem: Problem, grid: Sequence[int], default: int, lodo_pred: np.ndarray,
                        lodo_default: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The leave-one-device-out headline figures when the fits use ``n`` architectures of each NAS
    table instead of the default (the rows scored do not change, only the rows fitted)."""
    out = []
    for n in sorted(set(grid) | {default}):
        p = problem.with_nas_fit(n)
        if n == default:
            pred, summary = lodo_pred, lodo_default
        else:
            pred, _ = leave_one_device_out(p)
            summary = summarize(p, {"predictor": pred})
        out.append(_lodo_headline(p, pred, summary, n))
    return out


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--nas", type=int, default=NAS_SAMPLE, help="architectures sampled per NAS space")
    ap.add_argument("--out", type=Path, default=RESULTS, help="where the figures go (JSON)")
    ap.add_argument("--write-calibration", action="store_true",
                    help="also rewrite kd_compile/targets/calibration/*.json from these fits")
    ap.add_argument("--no-lofo", action="store_true", help="skip leave-one-family-out (faster)")
    ap.add_argument("--nas-fit-grid", type=lambda v: [int(x) for x in v.split(",") if x], default=[50, 150, 200],
                    help="also run leave-one-device-out with the fits on N NAS architectures per table, for each "
                         "N of this comma list (empty: skip)")
    args = ap.parse_args(argv)
    if args.write_calibration and args.no_lofo:
        ap.error("--write-calibration needs the leave-one-family-out fits (each measured device's band carries "
                 "its family-left-out error): drop --no-lofo")
    import torch

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    print("command:", " ".join([Path(sys.executable).name, *sys.argv]))
    print(f"machine: {platform.node()} {platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"torch {torch.__version__}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '-')}")
    rows = load_measurements(nas=args.nas)
    problem = build_problem(rows, verbose=True)
    files = sorted({r.file for r in problem.rows})
    print(f"data: {len(problem.rows)} measured rows, {len({r.spec for r in problem.rows})} models, "
          f"{len({r.device for r in problem.rows})} devices, from {', '.join(files)}")
    everything = np.ones(len(problem.rows), bool)
    c_all = fit_on(problem, everything)
    print("constants (all devices):", ", ".join(f"{k}={v:.3g}" for k, v in c_all.to_dict().items()))
    ridge, ridge_scores = family_ridge(problem, everything, c_all)
    print(f"device scales' ridge (chosen by leave-one-family-out over all families): {ridge:g}; scores "
          + ", ".join(f"{k:g}: {v:.4f}" for k, v in ridge_scores.items()))
    devices = {r.device for r in problem.rows}

    print("\nleave-one-device-out fits:")
    pred, fits = leave_one_device_out(problem, verbose=True)
    lodo_preds = {"predictor": pred}
    base_l = {"flops": np.full(len(pred), np.nan), "params": np.full(len(pred), np.nan),
              "nearest-gpu": np.full(len(pred), np.nan)}
    for dev in sorted(devices):
        held = problem.mask(lambda r, d=dev: r.device == d)
        base_l["flops"][held] = proportional(problem, problem.flops, ~held & problem.fit_mask, held, False)[held]
        base_l["params"][held] = proportional(problem, problem.params, ~held & problem.fit_mask, held, False)[held]
        sc = device_scales(problem, ~held & problem.fit_mask, fits[dev], ridge=ridge)
        base_l["nearest-gpu"][held] = nearest_gpu(problem, held, fits[dev], sc, devices)[held]
    lodo_preds.update(base_l)
    lodo = summarize(problem, lodo_preds)
    print(_fmt(lodo, "\nLEAVE ONE DEVICE OUT (predictor: constants fitted without the device, device scales 1)"))
    lodo_misses = trt_misses(problem, pred)
    _print_misses(lodo_misses, "device")

    sensitivity = nas_fit_sensitivity(problem, args.nas_fit_grid, NAS_FIT, pred, lodo) if args.nas_fit_grid else []
    if sensitivity:
        print("\nsensitivity of leave-one-device-out to the NAS architectures the fits use (per NAS table):")
        for r in sensitivity:
            print(f"  fits on {r['nas_fit']:>3}: TensorRT batch 1 {100 * r['tensorrt_within_35']:.0f}% within 35% "
                  f"(median {100 * r['tensorrt_median_ape']:.1f}%; by device "
                  + ", ".join(f"{d} {100 * v:.0f}%" for d, v in r["tensorrt_within_35_by_device"].items())
                  + f"); eager Spearman min batch 32 {r['eager_b32_spearman_min']:.3f}, "
                  f"batch 64 {r['eager_b64_spearman_min']:.3f}")

    lofo: list[dict[str, Any]] = []
    lofo_preds: dict[str, np.ndarray] = {}
    lofo_ridges: dict[str, float] = {}
    lofo_misses: list[dict[str, Any]] = []
    if not args.no_lofo:
        print("\nleave-one-family-out fits:")
        pf, ffits, fscales, lofo_ridges = leave_one_family_out(problem, verbose=True)
        lofo_preds = {"predictor": pf}
        base_f = {k: np.full(len(pf), np.nan) for k in ("flops", "params", "nearest-gpu")}
        for fam in sorted({r.family for r in problem.rows}):
            held = problem.mask(lambda r, f=fam: r.family == f)
            base_f["flops"][held] = proportional(problem, problem.flops, ~held & problem.fit_mask, held, True)[held]
            base_f["params"][held] = proportional(problem, problem.params, ~held & problem.fit_mask, held, True)[held]
            base_f["nearest-gpu"][held] = nearest_gpu(problem, held, ffits[fam], fscales[fam], devices)[held]
        lofo_preds.update(base_f)
        lofo = summarize(problem, lofo_preds)
        print(_fmt(lofo, "\nLEAVE ONE FAMILY OUT (predictor: constants, device scales and their ridge "
                                 "fitted without the family)"))
        lofo_misses = trt_misses(problem, pf)
        _print_misses(lofo_misses, "family")

    data_dir = Path(os.environ.get("KD_LATENCY_DATA") or DEFAULT_DATA_DIR)
    checks = bars(lodo, lofo, sorted(f for f in files if not (data_dir / f).is_file()))
    print("\nbars:")
    for c in checks:
        print("  " + c)
    result = {
        "command": " ".join(sys.argv),
        "data": files,
        "rows": len(problem.rows),
        "constants_all_devices": c_all.to_dict(),
        "constants_without_device": {d: c.to_dict() for d, c in fits.items()},
        "device_scales_ridge": {"value": ridge, "scores": ridge_scores, "chosen_without_each_family": lofo_ridges},
        "leave_one_device_out": lodo,
        "leave_one_family_out": lofo,
        "groups_lodo": per_group(problem, lodo_preds),
        "groups_lofo": per_group(problem, lofo_preds) if lofo_preds else [],
        "lodo_tensorrt_b1_misses": lodo_misses,
        "lofo_tensorrt_b1_misses": lofo_misses,
        "bars": checks,
        "sensitivity_nas_fit": sensitivity,
    }
    if args.write_calibration:
        summary = calibrate_all(problem=problem, lodo=(pred, fits), lofo=lofo_preds.get("predictor"),
                                ridge=(ridge, ridge_scores), verbose=True)
        result["calibration"] = summary
        print("\nerror bands written (median / p80 APE, transfer):")
        for name, t in summary["targets"].items():
            cells = []
            for k, v in sorted(t["error_bands"].items()):
                own = t["measured"] and v["transfer"] == "fitted on this device"
                fam = v.get("family_left_out")
                cells.append(f"{k} {100 * v['median_ape']:.0f}%/{100 * v['p80_ape']:.0f}%{'' if own else '*'}"
                             + (f" (family left out {100 * fam['median_ape']:.0f}%)" if fam else ""))
            print(f"  {name:<18} " + "; ".join(cells))
        print("  (* = device left out or proxy)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=float) + "\n", encoding="utf-8")
    print(f"\nwrote {args.out} ({time.perf_counter() - t0:.0f}s)")


if __name__ == "__main__":
    main()
