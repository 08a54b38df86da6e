"""Per-model view of leave-one-device-out: each model of a device, predicted by constants fitted
without that device, against its measurement.

``benchmarks/latency_accuracy.py`` summarises the held-out error per (device, table, batch);
this prints the rows behind a summary, to see *which* models a transfer gets wrong (e.g. the
depthwise nets on a held-out T4, TensorRT batch 1).

Run::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/lodo_models.py [--devices t4,jetson-xavier-nx]
        [--runtime tensorrt] [--batch 1]

Nothing is written: it prints, for each device, the fit's constants and one line per model
(measured ms, predicted ms, predicted / measured), then the median APE and the share within 35%.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from kd_compile.calibrate import build_problem, fit_on, load_measurements, predict  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", default="t4,jetson-xavier-nx,jetson-agx-xavier,jetson-nano")
    ap.add_argument("--runtime", default="tensorrt", help="tensorrt | torch")
    ap.add_argument("--batch", type=int, default=1)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    problem = build_problem(load_measurements())
    for dev in filter(None, args.devices.split(",")):
        held = problem.mask(lambda r, d=dev: r.device == d)
        if not held.any():
            print(f"{dev}: no measured rows")
            continue
        constants = fit_on(problem, ~held)
        pred = predict(problem, held, constants)
        idx = np.flatnonzero(held)
        rows = [problem.rows[i] for i in idx]
        sel = [j for j, r in enumerate(rows) if r.runtime == args.runtime and r.batch == args.batch]
        print(f"\n{dev} left out ({args.runtime}, batch {args.batch}, {len(sel)} models); constants: "
              + ", ".join(f"{k}={v:.3g}" for k, v in constants.to_dict().items()))  # fmt: skip
        ratios = []
        for j in sel:
            r = rows[j]
            ratio = pred[j] / r.seconds
            ratios.append(ratio)
            print(f"  {r.spec:45} measured {r.seconds * 1e3:8.3f} ms  predicted {pred[j] * 1e3:8.3f} ms  x{ratio:.2f}")
        if ratios:
            ape = np.abs(np.asarray(ratios) - 1.0)
            print(f"  median APE {np.median(ape):.1%}, within 35%: {np.mean(ape <= 0.35):.0%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
