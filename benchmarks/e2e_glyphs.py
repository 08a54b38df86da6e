"""End-to-end benchmark of the bundled glyphs example, repeated over seeds.

Runs exactly what a user runs, once per seed::

    kd-compile examples/glyphs/teacher.pt --target 2080ti --max-params <teacher params / 10> --seed S

(training the teacher first with examples/glyphs/train_teacher.py when it is missing) and prints,
per seed and as mean and standard deviation over the seeds: wall time, teacher and student
accuracy on the held-out TEST split (with KD and its CE-only twin; validation accuracy, on which
the search chose, beside it), the params ratio, the speed-up on the target (with how it was
obtained) and on this CPU (measured), and the candidates evaluated. The figures are written to
``benchmarks/results/e2e_glyphs.json`` (``--results`` elsewhere, e.g. for a quick check).

    python benchmarks/e2e_glyphs.py [--seeds 3] [--strategy turbo] [--budget N] [--target 2080ti]
        [--cli "--final-epochs 1"] [--results /tmp/e2e.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEACHER = ROOT / "examples" / "glyphs" / "teacher.pt"
RESULTS = ROOT / "benchmarks" / "results" / "e2e_glyphs.json"


def _run(cmd: list[str], out: Path) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print(proc.stderr[-3000:])
        sys.exit(proc.returncode)
    r = json.loads((out / "report.json").read_text())
    s, t, sp = r["student"], r["teacher"], r.get("speedup") or {}
    if r["run"]["data"].get("accuracy_split") != "test":
        sys.exit(f"the report quotes {r['run']['data'].get('accuracy_split')} accuracy, not test: no test split?")
    return {
        "wall_s": wall,
        "test_images": r["run"]["data"]["test"],
        "teacher_acc": t["accuracy"],  # test accuracy (the report's headline)
        # the student that ships: the KD student, or its CE-only twin where that scored higher on validation
        "trained_with": s.get("trained_with", "kd"),
        "student_acc": s["accuracy"],
        "student_acc_kd": s.get("accuracy_with_kd", s["accuracy"]),
        "student_acc_ce": s["accuracy_without_kd"],
        "teacher_val_acc": t["val_accuracy"],
        "student_val_acc": s["val_accuracy"],
        "student_val_acc_kd": s.get("val_accuracy_with_kd", s["val_accuracy"]),
        "student_val_acc_ce": s["val_accuracy_without_kd"],
        "kd_gain_points": None if s["kd_gain"] is None else 100 * s["kd_gain"],
        "gap_points": 100 * (t["accuracy"] - s["accuracy"]),
        "params": s["params"],
        "params_ratio": s["params_ratio"],
        "speedup_target": sp.get("target"),
        "speedup_method": sp.get("method"),
        "speedup_cpu": (sp.get("local_cpu") or {}).get("speedup"),
        "evaluated": r["search"]["evaluated"],
        "statuses": r["search"]["statuses"],
        # proposals the screen rejected before evaluation (predicted latency, FLOPs, memory)
        "screened": r["search"].get("screened", 0),
        "share_outside_training": r["run"]["share_outside_training"],
        "arch": s["arch"],
    }


def _stats(rows: list[dict], key: str) -> tuple[float, float] | None:
    vals = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
    if not vals:
        return None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-e2e")
    ap.add_argument("--seeds", type=int, default=3, help="repeat the whole run with seeds 0..N-1")
    ap.add_argument("--strategy", default="auto", help="kd-compile's --strategy (default: its own default)")
    ap.add_argument("--budget", type=int, default=None)
    ap.add_argument("--target", default="2080ti")
    ap.add_argument("--max-params", default=None, help="default: a tenth of the teacher's parameters")
    ap.add_argument("--cli", default="", help="extra kd-compile options, e.g. '--final-epochs 1 --proxy-epochs 0.5'")
    ap.add_argument("--results", type=Path, default=RESULTS, help="where to write the figures (JSON)")
    args = ap.parse_args()

    if not TEACHER.is_file():
        subprocess.run([sys.executable, str(ROOT / "examples" / "glyphs" / "train_teacher.py")], check=True)
    from kd_compile.teacher import load_teacher

    params_t = load_teacher(TEACHER).params
    limit = args.max_params or f"{params_t / 10 / 1000:.0f}K"
    exe = Path(sys.executable).with_name("kd-compile")
    base = [str(exe), str(TEACHER), "--target", args.target, "--max-params", limit, "--strategy", args.strategy]
    if args.budget:
        base += ["--budget", str(args.budget)]
    base += shlex.split(args.cli)
    print("command:", " ".join(base), "--seed S --out ... --force --json")
    machine = f"{platform.platform()}, {os.cpu_count()} CPUs, python {platform.python_version()}"
    print(f"machine: {machine}")
    rows = []
    for seed in range(args.seeds):
        out = args.out / f"seed{seed}"
        row = _run([*base, "--seed", str(seed), "--out", str(out), "--force", "--json"], out)
        rows.append({"seed": seed, **row})
        cpu = "-" if row["speedup_cpu"] is None else f"{row['speedup_cpu']:.2f}x"
        print(
            f"seed {seed}: {row['wall_s']:6.1f} s  test accuracy on {row['test_images']:,} images: teacher "
            f"{row['teacher_acc']:.2%}  student {row['student_acc']:.2%}, ships {row['trained_with'].upper()} "
            f"(KD {row['student_acc_kd']:.2%}, CE {row['student_acc_ce']:.2%}); validation "
            f"{row['teacher_val_acc']:.2%} / {row['student_val_acc']:.2%}  "
            f"params {row['params']:,} ({row['params_ratio']:.3f})  "
            f"speed-up {row['speedup_target']:.2f}x on {args.target} ({row['speedup_method']}), {cpu} on this CPU  "
            f"{row['arch']}"
        )
    print(f"\nover {len(rows)} seeds, mean ± standard deviation:")
    summary = {}
    for key, label, fmt in (
        ("wall_s", "wall time (s)", "{:.1f} ± {:.1f}"),
        ("teacher_acc", "teacher test accuracy", "{:.2%} ± {:.2%}"),
        ("student_acc", "student test accuracy (shipped)", "{:.2%} ± {:.2%}"),
        ("student_acc_kd", "student test accuracy (KD)", "{:.2%} ± {:.2%}"),
        ("student_acc_ce", "student test accuracy (CE twin)", "{:.2%} ± {:.2%}"),
        ("kd_gain_points", "KD gain on test (points)", "{:+.2f} ± {:.2f}"),
        ("gap_points", "test gap to teacher (points)", "{:.2f} ± {:.2f}"),
        ("teacher_val_acc", "teacher validation accuracy", "{:.2%} ± {:.2%}"),
        ("student_val_acc", "student validation accuracy (shipped)", "{:.2%} ± {:.2%}"),
        ("student_val_acc_kd", "student validation accuracy (KD)", "{:.2%} ± {:.2%}"),
        ("student_val_acc_ce", "student validation accuracy (CE)", "{:.2%} ± {:.2%}"),
        ("params_ratio", "params ratio", "{:.3f} ± {:.3f}"),
        ("speedup_target", f"speed-up on {args.target}", "{:.2f}x ± {:.2f}"),
        ("speedup_cpu", "speed-up on this CPU (measured)", "{:.2f}x ± {:.2f}"),
        ("share_outside_training", "share of time outside training", "{:.1%} ± {:.1%}"),
    ):
        st = _stats(rows, key)
        if st is not None:
            summary[key] = {"mean": st[0], "std": st[1]}
            print(f"  {label:<34} {fmt.format(*st)}")
    summary["shipped_ce"] = sum(r["trained_with"] == "ce" for r in rows)
    print(f"  (test accuracies on {rows[0]['test_images']:,} held-out images no choice saw; the CE-only twin "
          f"shipped in {summary['shipped_ce']} of {len(rows)} runs, where it beat the KD student on validation)")
    doc = {
        "command": " ".join(base),
        "machine": machine,
        "accuracy_split": "test",
        "test_images": rows[0]["test_images"],
        "seeds": rows,
        "summary": summary,
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
