"""How repeatable is the onnxruntime profiler? Claim: repeated medians agree within 5 %.

Profiles the same model N times (default 5) with ``OnnxRuntimeProfiler`` and prints each
median, its spread, and the largest median-to-median variation ``(max - min) / min``. Models:
a small CNN (``tiny_cnn`` of the contract suite at 32x32) and timm ``resnet18`` at 224x224
(random weights: latency does not depend on the weight values). Prints the command, the
machine and its load average, since other processes on a shared machine move the numbers, and
writes the settings, every median and each model's variation to
``benchmarks/results/ort_stability.json`` (``--results``), the file the README's "ONNX Runtime
repeatability" figures are checked against (``tests/test_readme_figures.py``).

Run::

    .venv/bin/python benchmarks/ort_stability.py               # threads=1, 5 repeats
    .venv/bin/python benchmarks/ort_stability.py --threads 0   # ORT default threads
    .venv/bin/python benchmarks/ort_stability.py --clock cpu   # thread CPU time (threads=1)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from kd_compile.profilers.base import InputSpec
from kd_compile.profilers.onnxrt import OnnxRuntimeProfiler, physical_cores
from kd_compile.profilers.torch_timer import cpu_name
from kd_compile.testing.profilers import tiny_cnn

GOAL = 0.05
RESULTS = Path(__file__).resolve().parent / "results" / "ort_stability.json"


def _resnet18() -> nn.Module:
    import timm

    return timm.create_model("resnet18", pretrained=False, num_classes=1000)


def _small_cnn() -> nn.Module:
    return tiny_cnn()


MODELS: dict[str, tuple[Callable[[], nn.Module], InputSpec]] = {
    "small_cnn": (_small_cnn, InputSpec((3, 32, 32), batch=1)),
    "resnet18": (_resnet18, InputSpec((3, 224, 224), batch=1)),
}


def _load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="small_cnn,resnet18", help=f"comma list of {', '.join(MODELS)}")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads; 0 = ORT default")
    ap.add_argument("--min-time", type=float, default=1.0, help="min_time_s of each profile")
    ap.add_argument("--target-cv", type=float, default=0.01, help="stop when rel. s.e. of the median < this")
    ap.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall: perf_counter latency; cpu: thread CPU time (threads=1)",
    )
    ap.add_argument("--max-time", type=float, default=15.0, help="max_time_s of each profile")
    ap.add_argument("--results", default=str(RESULTS), help="JSON written at the end; 'none' writes nothing")
    args = ap.parse_args(argv)
    names = [n for n in args.models.split(",") if n]
    unknown = [n for n in names if n not in MODELS]
    if unknown or not names:
        ap.error(f"--models: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(MODELS)}")

    import onnxruntime

    print("command:", shlex.join([sys.executable, *sys.argv]))
    print(
        f"machine: {cpu_name()}; {os.cpu_count()} logical CPUs, {physical_cores()} physical cores "
        f"available; {platform.platform()}"
    )
    print(
        f"software: python {platform.python_version()}, torch {torch.__version__}, "
        f"onnxruntime {onnxruntime.__version__}"
    )
    print(
        f"settings: threads={args.threads or 'ORT default'}, repeats={args.repeats}, "
        f"min_time_s={args.min_time}, max_time_s={args.max_time}, target_cv={args.target_cv}, "
        f"clock={args.clock}"
    )
    load_start = _load()
    print(f"load average at start (1/5/15 min): {load_start}")
    threads = args.threads or None
    worst = 0.0
    rows: list[dict[str, Any]] = []
    t_all = time.perf_counter()
    for name in names:
        build, spec = MODELS[name]
        model = build()
        medians: list[float] = []
        runs: list[dict[str, Any]] = []
        with OnnxRuntimeProfiler(
            threads=threads,
            min_time_s=args.min_time,
            target_cv=args.target_cv,
            max_time_s=args.max_time,
            clock=args.clock,
        ) as p:
            p.profile(model, spec)  # export + session creation, not counted
            print(f"\n{name} {tuple(spec.shape)} batch {spec.batch}:")
            for i in range(args.repeats):
                t0 = time.perf_counter()
                m = p.profile(model, spec)
                medians.append(m.p50_ms)
                runs.append(
                    {"median_ms": m.p50_ms, "p90_ms": m.p90_ms, "p99_ms": m.p99_ms, "cv": m.cv,
                     "iterations": m.iterations, "stopped_by": m.extra["stopped_by"]}
                )  # fmt: skip
                print(
                    f"  run {i + 1}: median {m.p50_ms:8.4f} ms  p90 {m.p90_ms:8.4f}  "
                    f"p99 {m.p99_ms:8.4f}  robust cv {m.cv:6.3f}  iters {m.iterations:5d}  "
                    f"({m.extra['stopped_by']}, {time.perf_counter() - t0:.1f} s, load {_load()})"
                )
        lo, hi = min(medians), max(medians)
        var = (hi - lo) / lo
        worst = max(worst, var)
        print(
            f"  max median-to-median variation: {100 * var:.2f} %  "
            f"({'meets' if var < GOAL else 'MISSES'} the {100 * GOAL:.0f} % goal)"
        )
        rows.append(
            {"model": name, "input_shape": list(spec.shape), "batch": spec.batch, "runs": runs,
             "variation": var, "meets_goal": var < GOAL}
        )  # fmt: skip
    print(f"\nload average at end (1/5/15 min): {_load()}")
    print(f"worst variation over models: {100 * worst:.2f} %")
    if args.results.lower() != "none":
        doc = {
            "settings": {
                "threads": args.threads, "repeats": args.repeats, "min_time_s": args.min_time,
                "max_time_s": args.max_time, "target_cv": args.target_cv, "clock": args.clock, "goal": GOAL,
            },
            "machine": {
                "cpu": cpu_name(), "logical_cpus": os.cpu_count(), "physical_cores": physical_cores(),
                "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
                "onnxruntime": onnxruntime.__version__, "load_start": load_start, "load_end": _load(),
            },
            "models": rows,
            "worst_variation": worst,
            "seconds": round(time.perf_counter() - t_all, 1),
        }  # fmt: skip
        out = Path(args.results)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
