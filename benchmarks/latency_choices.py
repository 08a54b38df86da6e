"""How the latency predictor's structure was chosen: each choice compared on data its test never sees.

The test figures (``benchmarks/latency_accuracy.py``: a device or a family left out) must not pick
the model they report on. Two selection criteria do, each for the part of the model it speaks to:

* **Device scales** (what a device with its own measurements fits on them): each device's own
  5-fold error over its models (``calibrate.kfold_on_device``: constants fitted without the
  device, as shipped; its scales fitted on four folds of its models, the fifth predicted). Printed:
  the median absolute percentage error per device and the mean over devices, for the shipped
  scales (compute, whose scale serves memory time too, and fixed cost, each per runtime, pulled
  toward 1 with the ridge the calibration chose: ``calibrate.family_ridge``;
  ``calibrate.SEPARATE_MEMORY``), for a memory scale of its own beside the compute scale, and
  for the weakest pull toward 1 (a random split of models favours it: a fold's family is in its
  other folds, where the ridge is chosen on families left out); and, with the shipped scales, for
  the constants' alternatives below and for both channel half-saturations fitted apart.
* **Device-independent constants** (what a device without measurements, the default ``2080ti``
  in TensorRT among them, is predicted with): nested leave-one-device-out over the TensorRT
  devices. For each pair of them, constants fitted without both predict each one's TensorRT
  batch-1 rows; with one device held out as the test, a structure is judged on the others,
  predicted by fits that also leave out the test device. Printed for the shipped constants (one
  channel half-saturation ``c_half`` for every runtime, held at 16), the same fitted, and graph
  runtimes' own ``c_half_graph`` fitted beside the held eager one; then the outer estimate: each test
  device predicted by the structure its own inner comparison chose (what the procedure "choose,
  then fit" reaches on a device it never saw), beside the shipped structure's figure.
* **The power cap per process node** (``Constants.node_beta``): the same nested
  leave-one-device-out over the devices whose fp16 tensor-core rows run under a power limit
  (RTX 3090/4090, A100, T4, the Jetson Xaviers), judged on each device's fp16 rows, for the node
  term held at 1 (shipped), fitted, and left out (one FLOP per joule for every node).

Run (about 10 minutes; reads only ``../shared/data/latency/``)::

    python benchmarks/latency_choices.py [--results benchmarks/results/latency_choices.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kd_compile.calibrate import (  # noqa: E402
    HELD,
    RIDGES,
    SEPARATE_MEMORY,
    TIED,
    build_problem,
    fit_on,
    kfold_on_device,
    leave_one_device_out,
    load_measurements,
    predict,
)
from kd_compile.calibrate.problem import Problem  # noqa: E402
from kd_compile.calibrate.write import shipped_ridge  # noqa: E402
from kd_compile.profilers.roofline import DEV_COLUMNS, Constants  # noqa: E402

HELD_BUT_C_HALF = tuple(h for h in HELD if h != "c_half")  # c_half fitted, not held
# name -> (held constants, tied constants) of each structure compared for the constants
STRUCTURES: dict[str, tuple[tuple[str, ...], dict[str, str]]] = {
    "shipped": (HELD, dict(TIED)),  # one c_half for every runtime, held at 16
    "one c_half, fitted": (HELD_BUT_C_HALF, dict(TIED)),
    "own c_half_graph, fitted": (HELD, {}),
}
# the device scales' other structure: a memory scale of its own, or one scale for compute and memory
OTHER_MEMORY = "one scale for compute and memory" if SEPARATE_MEMORY else "a memory scale of its own"
BOTH_APART = "c_half and c_half_graph fitted"  # only for the k-fold and the fitted values
WITH_BOTH_APART = {**STRUCTURES, BOTH_APART: (HELD_BUT_C_HALF, {})}


def trt_devices(problem: Problem) -> list[str]:
    return sorted({r.device for r in problem.rows if r.runtime == "tensorrt"})


def trt_batch1(problem: Problem, device: str) -> np.ndarray:
    """The rows of ``device`` 's TensorRT batch-1 models."""
    return problem.mask(lambda r: r.device == device and r.runtime == "tensorrt" and r.batch == 1)


# the power cap per process node (``Constants.node_beta``): held at 1 (shipped), fitted, or none (one
# FLOP per joule for every node: the profiles' process nodes ignored)
SHIPPED_NODE = "shipped (node_beta held at 1)"
NODE_STRUCTURES: dict[str, tuple[bool, tuple[str, ...]]] = {
    SHIPPED_NODE: (True, HELD),  # the structure of STRUCTURES["shipped"]
    "node_beta fitted": (True, tuple(h for h in HELD if h != "node_beta")),
    "no node term": (False, HELD),
}


def without_nodes(problem: Problem) -> Problem:
    """The same rows with every device's process node unknown: one power-cap efficiency for all."""
    dev = problem.table.dev.copy()
    dev[:, DEV_COLUMNS.index("process_nm")] = 0.0
    return dataclasses.replace(problem, table=dataclasses.replace(problem.table, dev=dev))


def capped_devices(problem: Problem) -> list[str]:
    """Devices with fp16 tensor-core rows whose board has a power limit (where the cap can bind)."""
    col = {n: i for i, n in enumerate(DEV_COLUMNS)}
    dev = problem.table.dev
    return sorted({r.device for r, d in zip(problem.rows, dev, strict=True)
                   if r.precision == "fp16" and d[col["tensor_cores"]] > 0 and d[col["tdp_w"]] > 0})


def node_choice(problem: Problem, shipped_lodo: dict[str, Constants] | None = None) -> dict:
    """Nested leave-one-device-out over the power-capped devices for the cap's node term: with one
    device as the test, each structure is judged by the others' fp16 rows, each predicted by fits
    without it and the test device; the test device is then predicted, without it, by the chosen
    structure. ``shipped_lodo``: the shipped structure's leave-one-device-out fits, when already made."""
    devices = capped_devices(problem)
    problems = {name: (problem if nodes else without_nodes(problem)) for name, (nodes, _) in NODE_STRUCTURES.items()}

    def fp16(d: str) -> np.ndarray:
        return problem.mask(lambda r: r.device == d and r.precision == "fp16")

    def mape(p: Problem, m: np.ndarray, c: Constants) -> float:
        return float(np.median(np.abs(predict(p, m, c) / problem.seconds[m] - 1)))

    inner: dict[str, list[dict]] = {name: [] for name in NODE_STRUCTURES}
    for a, b in itertools.combinations(devices, 2):
        for name, (_, held) in NODE_STRUCTURES.items():
            p = problems[name]
            c = fit_on(p, ~problem.mask(lambda r, q=(a, b): r.device in q), held=held)
            for d in (a, b):
                inner[name].append({"without": [a, b], "device": d, "median_ape": round(mape(p, fp16(d), c), 4)})
    sel = selection(inner)
    outer, test = {}, {}
    for name, (nodes, held) in NODE_STRUCTURES.items():
        p = problems[name]
        test[name] = {}
        for d in devices:
            if shipped_lodo is not None and name == SHIPPED_NODE:
                c = shipped_lodo[d]
            else:
                c = fit_on(p, ~problem.mask(lambda r, q=d: r.device == q), held=held)
            test[name][d] = {"median_ape": round(mape(p, fp16(d), c), 4),
                             "node_beta": round(c.node_beta, 3) if nodes else 0.0,  # no node: no term
                             "tc_gflop_per_j": round(c.tc_gflop_per_j, 1)}
    for d, by in sel.items():
        pick = min(by, key=by.get)
        outer[d] = {"selected": pick, **test[pick][d], "shipped": test[SHIPPED_NODE][d]}
    return {"devices": devices, "inner": inner, "selection": sel, "lodo": test, "outer": outer}


def print_selection(sel: dict[str, dict[str, float]]) -> None:
    """Each test device's mean inner error per structure, and the one chosen (the lowest)."""
    for dev, by in sel.items():
        best = min(by, key=by.get)
        print(f"  test {dev:18} " + "  ".join(f"{n} {100 * v:.1f}%" for n, v in by.items()) + f"  -> {best}")


def print_node_choice(r: dict) -> None:
    print("power cap per process node: nested leave-one-device-out over the power-capped devices "
          f"({', '.join(r['devices'])}), median error of each device's fp16 rows")
    print_selection(r["selection"])
    print("  outer: each test device predicted, without it, by the structure its own comparison chose")
    for dev, o in r["outer"].items():
        print(f"  {dev:18} {o['selected']:30} median {100 * o['median_ape']:.1f}% "
              f"(shipped {100 * o['shipped']['median_ape']:.1f}%)")
    print("  leave-one-device-out per structure (node_beta, GFLOP/J fitted without the device):")
    for name, by in r["lodo"].items():
        print(f"  {name:30} " + "  ".join(
            f"{d} {100 * v['median_ape']:.1f}% ({v['node_beta']:g}, {v['tc_gflop_per_j']:g})" for d, v in by.items()))


def kfold_errors(problem: Problem, fits: dict[str, Constants], separate_memory: bool, ridge: float
                 ) -> dict[str, float]:
    """Median APE of each device's own 5-fold held-out predictions, with the constants ``fits``
    fitted without it and the device scales' pull toward 1 ``ridge``."""
    out = {}
    for dev, c in fits.items():
        pred = kfold_on_device(problem, dev, c, separate_memory=separate_memory, ridge=ridge)
        on = problem.mask(lambda r, d=dev: r.device == d)
        out[dev] = round(float(np.median(np.abs(pred[on] / problem.seconds[on] - 1))), 4)
    return out


def nested_lodo(problem: Problem, held: tuple[str, ...], tie: dict[str, str]) -> list[dict]:
    """For each pair of TensorRT devices, constants fitted without both predict each one."""
    out = []
    for a, b in itertools.combinations(trt_devices(problem), 2):
        c = fit_on(problem, ~problem.mask(lambda r, p=(a, b): r.device in p), held=held, tie=tie)
        for d in (a, b):
            m = trt_batch1(problem, d)
            ape = np.abs(predict(problem, m, c) / problem.seconds[m] - 1)
            out.append({"without": [a, b], "device": d, "median_ape": round(float(np.median(ape)), 4)})
    return out


def selection(nested: dict[str, list[dict]]) -> dict[str, dict[str, float]]:
    """Per test device: each structure's mean inner median error (the other TensorRT devices,
    each predicted by fits without it and the test device)."""
    devices = sorted({r["device"] for rows in nested.values() for r in rows})
    out = {}
    for test in devices:
        out[test] = {name: round(float(np.mean([r["median_ape"] for r in rows
                                                if test in r["without"] and r["device"] != test])), 4)
                     for name, rows in nested.items()}
    return out


def lodo_trt(problem: Problem, pred: np.ndarray) -> dict[str, dict[str, float]]:
    """Each TensorRT device's batch-1 error in leave-one-device-out predictions ``pred`` (its test)."""
    out = {}
    for d in trt_devices(problem):
        m = trt_batch1(problem, d)
        ape = np.abs(pred[m] / problem.seconds[m] - 1)
        out[d] = {"median_ape": round(float(np.median(ape)), 4), "within_35": round(float(np.mean(ape <= 0.35)), 4)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "latency_choices.json")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    problem = build_problem(load_measurements())
    doc: dict = {"about": __doc__.split("\n\n")[0], "kfold": {}, "nested_lodo": {}}
    # leave-one-device-out once per structure: its fits serve the k-fold and the TensorRT test figures
    lodo = {name: leave_one_device_out(problem, held=held, tie=tie)
            for name, (held, tie) in WITH_BOTH_APART.items()}
    ridge = doc["ridge"] = shipped_ridge()
    for name, structure, separate, r in (
        ("shipped", "shipped", SEPARATE_MEMORY, ridge),
        (OTHER_MEMORY, "shipped", not SEPARATE_MEMORY, ridge),
        (f"weakest pull toward 1 (ridge {min(RIDGES):g})", "shipped", SEPARATE_MEMORY, min(RIDGES)),
        *((n, n, SEPARATE_MEMORY, ridge) for n in (*list(STRUCTURES)[1:], BOTH_APART)),
    ):
        per = kfold_errors(problem, lodo[structure][1], separate, r)
        doc["kfold"][name] = {"per_device": per, "mean": round(float(np.mean(list(per.values()))), 4)}
    print(f"device scales: each device's own 5-fold median error (constants fitted without the device; "
          f"scales' ridge {ridge:g} as shipped, chosen by leave-one-family-out)")
    for name, r in doc["kfold"].items():
        print(f"  {name:34} mean {100 * r['mean']:.2f}%  " + "  ".join(
            f"{d} {100 * v:.1f}%" for d, v in r["per_device"].items()))
    everything = np.ones(len(problem.rows), bool)
    doc["channel_penalty_all_devices"] = {}
    for name, (held, tie) in WITH_BOTH_APART.items():
        c = fit_on(problem, everything, held=held, tie=tie)
        doc["channel_penalty_all_devices"][name] = {"c_half": round(c.c_half, 2),
                                                    "c_half_graph": round(c.c_half_graph, 2)}
    print("channel half-saturation fitted on all devices (eager c_half, graph runtimes' c_half_graph):")
    for name, v in doc["channel_penalty_all_devices"].items():
        print(f"  {name:30} c_half {v['c_half']:g}  c_half_graph {v['c_half_graph']:g}")
    for name, (held, tie) in STRUCTURES.items():
        doc["nested_lodo"][name] = nested_lodo(problem, held, tie)
    doc["selection"] = selection(doc["nested_lodo"])
    test = {name: lodo_trt(problem, lodo[name][0]) for name in STRUCTURES}
    doc["lodo_trt"] = test
    doc["outer"] = {}
    for dev, by in doc["selection"].items():
        pick = min(by, key=by.get)
        doc["outer"][dev] = {"selected": pick, **test[pick][dev], "shipped": test["shipped"][dev]}
    doc["outer_within_35"] = round(float(np.mean([r["within_35"] for r in doc["outer"].values()])), 4)
    doc["overall_mean_inner"] = {n: round(float(np.mean([r["median_ape"] for r in rows])), 4)
                                 for n, rows in doc["nested_lodo"].items()}
    print("constants: nested leave-one-device-out over the TensorRT devices, median error of the inner "
          "predictions (fits without both devices)")
    for name, rows in doc["nested_lodo"].items():
        print(f"  {name:24} " + "  ".join(f"{r['device']} w/o {'+'.join(r['without'])}: {100 * r['median_ape']:.1f}%"
                                          for r in rows))
    print("selection: mean inner median error with each device held out as the test (lower is chosen)")
    print_selection(doc["selection"])
    print("outer: each test device predicted, without it, by the structure its own comparison chose")
    for dev, r in doc["outer"].items():
        print(f"  {dev:18} {r['selected']:24} median {100 * r['median_ape']:.1f}%, "
              f"{100 * r['within_35']:.0f}% within 35% "
              f"(shipped: {100 * r['shipped']['median_ape']:.1f}%, {100 * r['shipped']['within_35']:.0f}%)")
    print(f"  devices weighted equally: {100 * doc['outer_within_35']:.0f}% within 35%; mean of all inner errors: "
          + ", ".join(f"{n} {100 * v:.1f}%" for n, v in doc["overall_mean_inner"].items()))
    doc["node"] = node_choice(problem, lodo["shipped"][1])
    print_node_choice(doc["node"])
    doc["seconds"] = round(time.perf_counter() - t0, 1)
    doc["machine"] = f"{os.cpu_count()} CPUs"
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.results} ({doc['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
