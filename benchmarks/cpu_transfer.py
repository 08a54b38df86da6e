"""A CPU predicted from its datasheet alone: HELP's four Xeons, this project's VM, and networks timed here.

The latency predictor is calibrated on one CPU only, this project's development VM (``cpu`` target,
``benchmarks/cpu_table.py``). A CPU profile of a user's without a table of its own is predicted with
the all-device constants (fitted on GPU tables) and unit scales. HELP's NAS-Bench-201 and FBNet tables
time every architecture at batch 1 on four Intel Xeon CPUs too (runtime undocumented, read as eager
PyTorch fp32), and no fit reads those columns: each Xeon, described by a profile built from its
datasheet (``kd_compile/calibrate/data/cpus/*.toml``), is predicted that way, and so are the VM's own
ONNX Runtime and eager tables with the shipped ``cpu`` profile. This script prints, per CPU and
family (or runtime), predicted / measured (median), the median and 80th-percentile absolute error, the
share within 35% and the Spearman rho, and beside the Xeons' the same rows predicted with the ``cpu``
target's fitted constants and scales (the one measured CPU's calibration carried to another CPU). The
pooled figures (devices weighted equally) are the bands a CPU profile without a table prints at batch
1 (``kd_compile.calibrate.cpus``); ``--write-calibration`` writes them into
``kd_compile/targets/calibration/_all_devices.json`` (``transfer_bands["cpu"]``; a full
``latency_accuracy.py --write-calibration`` writes the same).

``--measure-here N`` also times N of the sampled architectures of each table on this machine
(eager PyTorch fp32, batch 1, through ``kd_compile.profile(..., target="cpu", runtime="torch",
method="measure")``) and predicts them with the ``cpu`` target's calibration and as a profile of
this machine without one: the same networks on another CPU and a current PyTorch. Run it alone.

Run (a few seconds, plus about 1.6 s per architecture and repeat measured here)::

    python benchmarks/cpu_transfer.py [--measure-here 24 [--repeats 3]] [--write-calibration]
        [--results benchmarks/results/cpu_transfer.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import kd_compile  # noqa: E402
from kd_compile.calibrate.cpus import (  # noqa: E402
    DEV_VM,
    HELP_CPUS,
    cpu_problem,
    cpu_transfer_bands,
    datasheet_predictions,
)
from kd_compile.calibrate.fit import predict, quality  # noqa: E402
from kd_compile.calibrate.problem import Problem  # noqa: E402
from kd_compile.calibrate.tables import family_of  # noqa: E402
from kd_compile.profilers.devices import cpu_name  # noqa: E402
from kd_compile.profilers.roofline import SHARED_FIT, Constants, DeviceScales, read_calibration  # noqa: E402
from kd_compile.targets import get_target  # noqa: E402

CALIBRATION = ROOT / "kd_compile" / "targets" / "calibration"


def figures(pred: np.ndarray, meas: np.ndarray) -> dict[str, Any]:
    ratio = pred / meas
    ape = np.abs(ratio - 1)
    return {"n": int(len(meas)), "measured_median_ms": round(float(np.median(meas)) * 1e3, 3),
            "median_ratio": round(float(np.median(ratio)), 3), "median_ape": round(float(np.median(ape)), 4),
            "p80_ape": round(float(np.percentile(ape, 80)), 4), "within_35": round(float(np.mean(ape <= 0.35)), 4),
            "spearman": round(float(quality(pred, meas)["spearman"]), 4)}


def help_cpus(problem: Problem, constants: Constants) -> dict[str, Any]:
    everything = np.ones(len(problem.rows), bool)
    cpu_doc = read_calibration("cpu") or {}
    cpu_c = Constants.from_dict(cpu_doc["constants"])
    cpu_s = DeviceScales.from_dict(cpu_doc["device_scales"])
    preds = {"datasheet": datasheet_predictions(problem, constants),
             "cpu_target_calibration": predict(problem, everything, cpu_c, {d: cpu_s for d in HELP_CPUS.values()})}
    table: dict[str, Any] = {}
    for dev in HELP_CPUS.values():
        for fam in ("nb201", "fbnet"):
            m = problem.mask(lambda r, d=dev, f=fam: r.device == d and family_of(r.spec) == f)
            table[f"{dev}/{fam}"] = {k: figures(p[m], problem.seconds[m]) for k, p in preds.items()}
    # the development VM's own tables (timm models, 96-256 px): the cpu target's calibration was fitted on
    # them (its held-out figure: benchmarks/cpu_table.py), so only the datasheet prediction is a test here
    for rt in ("onnxruntime", "torch"):
        m = problem.mask(lambda r, rt=rt: r.device == DEV_VM and r.runtime == rt)
        if m.any():
            table[f"{DEV_VM}/{rt}"] = {"datasheet": figures(preds["datasheet"][m], problem.seconds[m])}
    band = cpu_transfer_bands(constants, problem)
    # how the CPUs' own columns agree on the sampled networks: what a per-CPU ranking can expect
    agree: dict[str, float] = {}
    for fam in ("nb201", "fbnet"):
        cols = {}
        for dev in HELP_CPUS.values():
            rows = [(r.spec, s) for r, s in zip(problem.rows, problem.seconds, strict=True)
                    if r.device == dev and family_of(r.spec) == fam]
            cols[dev] = dict(rows)
        devs = sorted(cols)
        for i, a in enumerate(devs):
            for b in devs[i + 1:]:
                common = sorted(set(cols[a]) & set(cols[b]))
                x = np.array([cols[a][s] for s in common])
                y = np.array([cols[b][s] for s in common])
                agree[f"{fam}:{a}~{b}"] = round(float(quality(x, y)["spearman"]), 4)
    return {"table": table, "band": band, "columns_agree": agree, "n_rows": len(problem.rows)}


def measure_here(problem: Problem, n: int, repeats: int = 1) -> dict[str, Any]:
    """``n`` sampled architectures per table timed on this machine ``repeats`` times (each time into an
    empty measurement cache), predicted two ways (once: a prediction does not move); figures per repeat."""
    specs: dict[str, list[str]] = {"nb201": [], "fbnet": []}
    for r in problem.rows:  # the tables' sample order
        fam = family_of(r.spec)
        if fam in specs and r.spec not in specs[fam] and len(specs[fam]) < n:
            specs[fam].append(r.spec)
    kw = {"runtime": "torch", "precision": "fp32", "batch": 1}
    # this machine as a user's profile without a calibration: the shipped cpu profile under another name;
    # predicted with an empty cache, so that no calibration of the user's stands in for the shipped one
    with tempfile.TemporaryDirectory() as tmp, _env("KD_COMPILE_CACHE", tmp):
        plain = Path(tmp) / "this-vm-uncalibrated.toml"
        plain.write_text((ROOT / "kd_compile" / "targets" / "cpu.toml").read_text(encoding="utf-8")
                         .replace('name = "cpu"', 'name = "this-vm-uncalibrated"', 1), encoding="utf-8")
        predicted = {how: {spec: kd_compile.profile(spec, target=target, method="predict", **kw)["latency_ms"] * 1e-3
                           for names in specs.values() for spec in names}
                     for how, target in (("cpu_target_calibration", "cpu"), ("datasheet", str(plain)))}
    out: dict[str, Any] = {"cpu": cpu_name(), "machine": platform.machine(), "torch": _torch_version(),
                           "repeats": [], "n_per_family": n}
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp, _env("KD_COMPILE_CACHE", tmp):  # each measurement taken now
            rep: dict[str, Any] = {}
            for fam, names in specs.items():
                runs = [kd_compile.profile(spec, target="cpu", method="measure", **kw) for spec in names]
                mm = np.array([m["latency_ms"] for m in runs]) * 1e-3  # seconds, as the tables'
                rep[fam] = {"threads": runs[-1].get("threads"),
                            **{how: figures(np.array([p[s] for s in names]), mm) for how, p in predicted.items()}}
                print(f"  {fam}: {len(names)} timed, median {1e3 * np.median(mm):.2f} ms", flush=True)
            out["repeats"].append(rep)
    return out


@contextlib.contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def _torch_version() -> str:
    import torch

    return torch.__version__


def write_band(band: dict[str, Any]) -> Path:
    path = CALIBRATION / SHARED_FIT.name
    doc = json.loads(path.read_text(encoding="utf-8"))
    doc.setdefault("transfer_bands", {})["cpu"] = band
    path.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--measure-here", type=int, default=0, metavar="N",
                    help="also time N sampled architectures of each table on this machine")
    ap.add_argument("--repeats", type=int, default=3, help="times to time them (default 3)")
    ap.add_argument("--write-calibration", action="store_true",
                    help="write the bands into kd_compile/targets/calibration/_all_devices.json")
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "cpu_transfer.json")
    args = ap.parse_args()
    t0 = time.perf_counter()
    shared = read_calibration(SHARED_FIT.stem)
    constants = Constants.from_dict(shared["constants"])
    problem = cpu_problem()
    if problem is None:
        raise SystemExit("no CPU table found (HELP's in ../shared/data/latency or KD_LATENCY_DATA, the VM's bundled)")
    res = help_cpus(problem, constants)
    print("CPUs predicted from their datasheets (all-device constants, unit scales), fp32, batch 1: HELP's Xeons "
          "(eager PyTorch) and this project's VM (its own tables) | with the cpu target's calibration")
    print(f"{'cpu/family (runtime)':30s} {'n':>4s} {'meas ms':>8s} | {'ratio':>6s} {'med':>6s} {'p80':>6s} {'w35':>5s} "
          f"{'rho':>6s} | {'ratio':>6s} {'med':>6s} {'w35':>5s} {'rho':>6s}")
    for key, v in res["table"].items():
        a, b = v["datasheet"], v.get("cpu_target_calibration")
        print(f"{key:30s} {a['n']:4d} {a['measured_median_ms']:8.2f} | x{a['median_ratio']:5.2f} "
              f"{100 * a['median_ape']:5.1f}% {100 * a['p80_ape']:5.1f}% {100 * a['within_35']:4.0f}% "
              f"{a['spearman']:6.3f} | " + (f"x{b['median_ratio']:5.2f} {100 * b['median_ape']:5.1f}% "
                                            f"{100 * b['within_35']:4.0f}% {b['spearman']:6.3f}" if b else
                                            "(fitted on it: benchmarks/cpu_table.py)"))
    for key, b in res["band"].items():
        print(f"band {key}: ±{100 * b['median_ape']:.1f}% median, {100 * b['p80_ape']:.1f}% p80 ({b['basis']})")
    agree = res["columns_agree"]
    print("the CPUs' own columns agree (Spearman): " + ", ".join(f"{k} {v:.2f}" for k, v in agree.items()))
    if args.measure_here:
        print(f"timing {args.measure_here} architectures per table here, {args.repeats} time(s) ...", flush=True)
        res["here"] = measure_here(problem, args.measure_here, args.repeats)
        for i, rep in enumerate(res["here"]["repeats"]):
            for fam, v in rep.items():
                for how in ("datasheet", "cpu_target_calibration"):
                    f = v[how]
                    print(f"here #{i + 1} {fam:6s} {how:24s} measured median {f['measured_median_ms']:.2f} ms, "
                          f"predicted x{f['median_ratio']:.2f}, ±{100 * f['median_ape']:.1f}% median, "
                          f"rho {f['spearman']:.3f}")
    if args.write_calibration:
        print(f"band written to {write_band(res['band'])}")
    res.update(about=__doc__.split("\n")[0], constants_from=SHARED_FIT.name, target_cpu=get_target("cpu").display_name,
               seconds=round(time.perf_counter() - t0, 1))
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.results} ({res['seconds']} s)")


if __name__ == "__main__":
    main()
