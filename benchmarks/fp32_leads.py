"""Why eager fp32 on ImageNet-size models is predicted 1.5-2x too slow, and two fixes tried (neither shipped).

The out-of-sample tables (``benchmarks/external_check.py``) show eager PyTorch fp32 on CUDA cores
predicted far too slow at 224 px: ryujaehun/pytorch-gpu-benchmark's batch-12 rows x1.5-2.2, NVIDIA
DeepLearningExamples' batch-256 rows x1.6-2.1 (VGG-16 on an RTX 2080 Ti measures 13.6 TFLOP/s, the
datasheet's fp32 peak, against the fitted CUDA-core efficiency ``e_cuda`` = 0.37). This script
refits the constants with the shipped structure and with each change below, and prints, side by
side, what every variant does to the fitted tables' held-out figures (leave-one-device-out,
computed and weighted as ``benchmarks/latency_accuracy.py`` does) and to the tables no fit reads
(constants fitted on all rows, unit device scales: a device predicted from its datasheet alone):

* ``shipped``: the calibration's structure and tables;
* ``+b12``: the batch-12 table's fp32 rows of two GPUs (GTX 1080 Ti, RTX 2080 Ti) enter the fit,
  the first ImageNet-size eager fp32 rows it would see; its Titan Xp, Titan RTX and A100 rows
  and DeepLearningExamples stay tests. Each of its timings includes the batch's copy from
  pageable host memory, subtracted at ``--copy-gbs`` (an assumption: no source measures it);
* ``+b12, c_half fitted``: the same, with the channel half-saturation fitted rather than held at 16;
* ``pseudo-half``: eager PyTorch's fp16 on a GPU without tensor cores (the Jetson Nano here)
  costed at the fp32 rate: PyTorch's cuDNN convolution descriptor computes half-precision
  convolutions in fp32 (``aten/src/ATen/cudnn/Descriptors.h``, ``ConvolutionDescriptor::set``:
  ``if (dataType == CUDNN_DATA_HALF) mathType = CUDNN_DATA_FLOAT``), which runs at the fp32 rate
  on CUDA cores;
* ``pseudo-half, +b12, c_half fitted``: both.

Run (about 4 minutes; reads ``../shared/data/latency/`` and ``benchmarks/data/``)::

    python benchmarks/fp32_leads.py [--results benchmarks/results/fp32_leads.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from external_check import DATA as DLE  # noqa: E402
from external_check import DATA_B12 as B12  # noqa: E402
from external_check import read_rows  # noqa: E402
from latency_accuracy import summarize  # noqa: E402

from kd_compile.calibrate import (  # noqa: E402
    HELD,
    TIED,
    MeasuredRow,
    Problem,
    build_problem,
    fit_on,
    leave_one_device_out,
    load_measurements,
    predict,
)
from kd_compile.profilers.roofline import DEV_COLUMNS  # noqa: E402
from kd_compile.targets.profile import get_target  # noqa: E402

FIT_DEVICES = ("1080ti", "2080ti")  # the batch-12 table's GPUs a "+b12" variant fits on; the rest stay tests
COL = {n: i for i, n in enumerate(DEV_COLUMNS)}
FREE_C_HALF = tuple(h for h in HELD if h != "c_half")


def external_rows(copy_gbs: float) -> list[MeasuredRow]:
    """The batch-12 table (each timing less the input's copy at ``copy_gbs``) and DeepLearningExamples' rows."""
    rows = []
    for r in read_rows(B12):
        b = int(r["batch"])
        copy_s = b * 3 * 224 * 224 * (4 if r["precision"] == "fp32" else 2) / (copy_gbs * 1e9)
        rows.append(MeasuredRow(r["spec"], r["device"], "torch", r["precision"], b,
                                float(r["ms_per_batch"]) / 1e3 - copy_s, "b12"))
    for r in read_rows(DLE):
        b = int(r["batch"])
        rows.append(MeasuredRow(r["spec"], r["device"], "torch", r["precision"], b, b / float(r["images_per_s"]),
                                "dle"))
    return rows


def pseudo_half(problem: Problem) -> Problem:
    """The problem with eager fp16 on GPUs without tensor cores costed at the fp32 peak."""
    dev = problem.table.dev.copy()
    for i, r in enumerate(problem.rows):
        if r.runtime == "torch" and r.precision != "fp32" and dev[i, COL["tensor_cores"]] == 0:
            dev[i, COL["peak_cuda"]] = dev[i, COL["peak_tc"]] = get_target(r.device).peak_for("fp32") * 1e12
    return dataclasses.replace(problem, table=dataclasses.replace(problem.table, dev=dev))


def evaluate(problem: Problem, ext: Problem, held: tuple[str, ...]) -> dict[str, Any]:
    """Held-out figures on the fitted tables, and the tables no fit reads predicted from datasheets."""
    pred, _ = leave_one_device_out(problem, held=held, tie=TIED)
    s = {(r["runtime"], r["batch"]): r for r in summarize(problem, {"predictor": pred}) if r["method"] == "predictor"}
    ape = np.abs(pred / problem.seconds - 1)
    eager_b1 = {d: round(float(np.median(ape[problem.mask(lambda r, d=d: r.device == d and r.runtime == "torch"
                                                           and r.batch == 1)])), 4)
                for d in ("jetson-nano", "jetson-agx-xavier")}
    c = fit_on(problem, np.ones(len(problem.rows), bool), held=held, tie=TIED)
    test = ext.mask(lambda r: not (r.file == "b12" and r.device in FIT_DEVICES))
    ratio = predict(ext, test, c) / ext.seconds[test]
    rows = [r for r, t in zip(ext.rows, test, strict=True) if t]
    tables = {}
    for key in sorted({(r.file, r.precision, r.device) for r in rows}):
        m = np.array([(r.file, r.precision, r.device) == key for r in rows])
        tables["/".join(key)] = {"n": int(m.sum()), "median_ratio": round(float(np.median(ratio[m])), 3),
                                 "within_35": round(float(np.mean(np.abs(ratio[m] - 1) <= 0.35)), 3)}
    return {
        "lodo": {
            "tensorrt_b1_within_35": round(s[("tensorrt", "1")]["within_35"], 4),
            "tensorrt_b1_median_ape": round(s[("tensorrt", "1")]["median_ape"], 4),
            "eager_b32_spearman_min": round(s[("torch", "32")]["spearman_min"], 4),
            "eager_b64_spearman_min": round(s[("torch", "64")]["spearman_min"], 4),
            "eager_b512_1024_median_ape": round(s[("torch", "512-1024")]["median_ape"], 4),
            "eager_b1_median_ape": eager_b1,
        },
        "unfitted_tables": tables,
        "constants": {k: round(float(v), 4) for k, v in dataclasses.asdict(c).items()
                      if k in ("e_tc", "e_cuda", "e_mem", "c_half", "tc_gflop_per_j")},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--copy-gbs", type=float, default=10.0, help="host-to-GPU copy rate subtracted from the batch-12 "
                    "timings, GB/s (default 10)")
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "fp32_leads.json")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    base = load_measurements()
    extra = external_rows(args.copy_gbs)
    fit_b12 = [r for r in extra if r.file == "b12" and r.precision == "fp32" and r.device in FIT_DEVICES]
    ext = build_problem(extra)
    shipped, with_b12 = build_problem(base), build_problem(base + fit_b12)
    variants = {
        "shipped": (shipped, ext, HELD),
        "+b12": (with_b12, ext, HELD),
        "+b12, c_half fitted": (with_b12, ext, FREE_C_HALF),
        "pseudo-half": (pseudo_half(shipped), pseudo_half(ext), HELD),
        "pseudo-half, +b12, c_half fitted": (pseudo_half(with_b12), pseudo_half(ext), FREE_C_HALF),
    }
    doc: dict[str, Any] = {"about": __doc__.split("\n\n")[0], "copy_gbs": args.copy_gbs,
                           "fit_devices": list(FIT_DEVICES), "variants": {}}
    for name, (problem, e, held) in variants.items():
        doc["variants"][name] = evaluate(problem, e, held)
        print(f"  {name}: {time.perf_counter() - t0:.0f}s", flush=True)
    names = list(variants)
    w = 40
    print("\ncolumns: " + "; ".join(f"({i + 1}) {n}" for i, n in enumerate(names)))
    print(f"{'':{w}}" + "".join(f"{'(' + str(i + 1) + ')':>14}" for i in range(len(names))))
    print("held out (leave-one-device-out, as latency_accuracy.py):")
    for k in doc["variants"]["shipped"]["lodo"]:
        if k == "eager_b1_median_ape":
            for d in doc["variants"]["shipped"]["lodo"][k]:
                print(f"  {'eager b1 median APE ' + d:{w - 2}}"
                      + "".join(f"{doc['variants'][n]['lodo'][k][d]:>14.3f}" for n in names))
        else:
            print(f"  {k:{w - 2}}" + "".join(f"{doc['variants'][n]['lodo'][k]:>14.3f}" for n in names))
    print("tables no fit reads (predicted / measured, median; constants on all rows, unit scales):")
    for k in doc["variants"]["shipped"]["unfitted_tables"]:
        ratios = [doc["variants"][n]["unfitted_tables"][k]["median_ratio"] for n in names]
        print(f"  {k:{w - 2}}" + "".join(f"{'x' + format(v, '.2f'):>14}" for v in ratios))
    print("constants (all rows):")
    for k in doc["variants"]["shipped"]["constants"]:
        print(f"  {k:{w - 2}}" + "".join(f"{doc['variants'][n]['constants'][k]:>14.3f}" for n in names))
    doc["seconds"] = round(time.perf_counter() - t0, 1)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"\nwrote {args.results} ({doc['seconds']:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
