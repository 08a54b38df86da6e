"""Compile a student from Python: the API a deployment script calls.

    python examples/python_api.py [--teacher examples/glyphs/teacher.pt] [--max-params 36K] [--budget 8]

``kd_compile.compile`` takes the same options as ``kd-compile compile`` (snake case names). This
is a plain script, with no ``if __name__ == "__main__":`` guard: the worker processes of the
final training (the KD student and its CE-only twin side by side) do not import the calling
script, so its body runs once.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import kd_compile

HERE = Path(__file__).resolve().parent

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--teacher", default=str(HERE / "glyphs" / "teacher.pt"))
ap.add_argument("--target", default="2080ti")
ap.add_argument("--max-params", default="36K")
ap.add_argument("--max-latency", default="1x", help="on the target; 1x = no slower than the teacher")
ap.add_argument("--budget", type=int, default=8)
ap.add_argument("--proxy-epochs", type=float, default=2.0)
ap.add_argument("--final-epochs", type=float, default=15.0)
ap.add_argument("--out", type=Path, default=Path("runs") / "python-api")
args = ap.parse_args()

result = kd_compile.compile(
    args.teacher,
    target=args.target,
    max_params=args.max_params,
    max_latency=args.max_latency,
    budget=args.budget,
    proxy_epochs=args.proxy_epochs,
    final_epochs=args.final_epochs,
    out=args.out,
    force=True,
)
s, t = result.report["student"], result.report["teacher"]
print(f"student {s['arch']}: {s['accuracy']:.2%} (teacher {t['accuracy']:.2%}), {s['params']:,} params")
print(f"Pareto front: {len(result.pareto)} candidates; wrote {', '.join(result.artifacts)}")
