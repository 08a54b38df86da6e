"""End-to-end benchmark of the bundled glyphs example (issue: kd-compile end to end).

Runs exactly what a user runs::

    kd-compile examples/glyphs/teacher.pt --target 2080ti --max-params <teacher params / 10>

(training the teacher first with examples/glyphs/train_teacher.py when it is missing) and prints
wall time, teacher and student accuracy, the params ratio, candidates evaluated, and the share of
time spent outside training.

    python benchmarks/e2e_glyphs.py [--out runs/bench-e2e] [--strategy turbo] [--budget N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEACHER = ROOT / "examples" / "glyphs" / "teacher.pt"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-e2e")
    ap.add_argument("--strategy", default="turbo")
    ap.add_argument("--budget", type=int, default=None)
    ap.add_argument("--target", default="2080ti")
    args = ap.parse_args()

    if not TEACHER.is_file():
        subprocess.run([sys.executable, str(ROOT / "examples" / "glyphs" / "train_teacher.py")], check=True)
    from kd_compile.teacher import load_teacher

    params_t = load_teacher(TEACHER).params
    limit = f"{params_t / 10 / 1000:.0f}K"
    exe = Path(sys.executable).with_name("kd-compile")
    cmd = [
        str(exe),
        str(TEACHER),
        "--target",
        args.target,
        "--max-params",
        limit,
        "--strategy",
        args.strategy,
        "--out",
        str(args.out),
        "--force",
        "--json",
    ]
    if args.budget:
        cmd += ["--budget", str(args.budget)]
    print("command:", " ".join(cmd))
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, python {platform.python_version()}")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print(proc.stderr[-3000:])
        sys.exit(proc.returncode)
    r = json.loads((args.out / "report.json").read_text())
    s, t = r["student"], r["teacher"]
    tm = r["run"]["timings_s"]
    print(f"wall time                 {wall:8.1f} s  (goal < 300 s)")
    print(f"teacher accuracy          {t['accuracy']:8.2%}  params {t['params']:,}")
    print(f"student accuracy (KD)     {s['accuracy']:8.2%}  params {s['params']:,}  ({s['arch']})")
    if s["accuracy_without_kd"] is not None:
        print(f"student accuracy (no KD)  {s['accuracy_without_kd']:8.2%}  -> KD gain {100 * s['kd_gain']:+.2f} points")
    print(f"accuracy gap to teacher   {100 * (t['accuracy'] - s['accuracy']):8.2f} points  (goal <= 3)")
    print(f"params ratio              {s['params_ratio']:8.3f}  (goal <= 0.12)")
    print(f"candidates evaluated      {r['search']['evaluated']:8d}  {r['search']['statuses']}")
    print(f"share outside training    {r['run']['share_outside_training']:8.2%}")
    print("timings (s):", ", ".join(f"{k} {v:.1f}" for k, v in tm.items()))


if __name__ == "__main__":
    main()
