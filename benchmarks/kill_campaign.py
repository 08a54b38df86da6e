"""Killed at a random moment, resumed: is the student the one a run never killed ships?

``tests/test_kill_resume.py`` kills a run at four chosen points. This script kills it at random
moments instead (SIGKILL, uniform over an uninterrupted run's duration, the teacher's outputs
cached as every run after the first finds them), resumes it with
``--resume`` (or reruns it afresh when it was killed before its journal's first line, exit 11 as
documented), and checks the resumed run's ``student.pt`` against the uninterrupted run's, weight
for weight, and that nothing is left behind in ``--out`` (staging folders, epoch checkpoints,
final and candidates', kept final students, temporary files). It also counts how often the
resumed run went on from a final training's epoch checkpoint, went on from a candidate's, or
restored the kept final students.

Two runs, one thread per process (``OMP_NUM_THREADS=1``), resumed at once after each kill:

* ``--example glyphs``: the bundled glyph teacher, ``--target 2080ti --max-params 62K --budget 3
  --final-epochs 4`` with proxies of the default two epochs on a quarter of the data (so a kill
  can land between a candidate's epochs), data in memory, the teacher's outputs cached as every
  run after the first finds them;
* ``--example imagefolder``: ``examples/imagefolder`` scaled down (its scripts' options: 3 classes
  x 300 PNGs at 32 px, the timm ``resnet10t`` teacher trained one epoch), streamed from disk by
  ``DataLoader`` workers with a top-k teacher cache, two-epoch proxies, ``--final-epochs 12``; every run starts with
  an empty cache folder, so kills land in the cache's build too.

Run::

    .venv/bin/python benchmarks/kill_campaign.py --kills 16 --seed 0
    .venv/bin/python benchmarks/kill_campaign.py --example imagefolder --kills 16 --seed 0

Prints each kill (time, what the resumed run said, identical or not) and a summary, and writes
them to ``benchmarks/results/kill_campaign.json`` (``kill_campaign_imagefolder.json``;
``--results``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
ARGS = {
    "glyphs": [
        str(ROOT / "examples" / "glyphs" / "teacher.pt"), "--target", "2080ti", "--max-params", "62K",
        "--budget", "3", "--proxy-epochs", "2", "--proxy-fraction", "0.25", "--final-epochs", "4",
        "--strategy", "random", "--seed", "0",
    ],
    "imagefolder": [
        "teacher.pt", "--target", "2080ti", "--max-params", "4M", "--data", "data", "--data-mode", "stream",
        "--stream-augment", "crop", "--budget", "2", "--proxy-epochs", "2", "--final-epochs", "12",
        "--no-compare-ce", "--device", "cpu", "--seed", "0",
    ],
}  # fmt: skip
LEFTOVERS = (".staging-*", "final-training-*.ckpt", "final-students.pt", "candidate-checkpoints", ".*.tmp")


def _env(cache: Path) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "KD_COMPILE_CACHE": str(cache), "COLUMNS": "200"}


def _prepare(example: str, work: Path) -> None:
    """The imagefolder example's data and teacher, made by its own scripts, small."""
    if example != "imagefolder":
        return
    scripts = ROOT / "examples" / "imagefolder"
    env = _env(work / "cache")
    for cmd in (
        [sys.executable, str(scripts / "make_data.py"), "--out", "data", "--size", "32", "--per-class", "300",
         "--classes", "3"],
        [sys.executable, str(scripts / "train_teacher.py"), "--data", "data", "--out", "teacher.pt", "--epochs", "1",
         "--size", "32", "--batch-size", "16", "--device", "cpu"],
    ):  # fmt: skip
        subprocess.run(cmd, cwd=work, env=env, check=True, capture_output=True)


def _cache_meta(cache: Path) -> dict:
    """The top-k cache's meta.json (streamed data), or {}."""
    found = sorted(cache.rglob("topk-*/meta.json"))
    return json.loads(found[0].read_text()) if found else {}


def _student(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "student.pt", map_location="cpu", weights_only=True)["state_dict"]


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--example", choices=sorted(ARGS), default="glyphs")
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--results", type=Path, default=None)
    args = ap.parse_args()
    suffix = "" if args.example == "glyphs" else f"_{args.example}"
    results = args.results or ROOT / "benchmarks" / "results" / f"kill_campaign{suffix}.json"
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="kill-campaign-"))
    cold = args.example == "imagefolder"  # every run with an empty cache folder

    def cache_of(name: str) -> Path:
        return work / (f"cache-{name}" if cold else "cache")

    def run(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "kd_compile", *ARGS[args.example], "--out", str(out), *extra]
        return subprocess.run(cmd, capture_output=True, text=True, env=_env(cache_of(out.name)), cwd=work)

    try:
        _prepare(args.example, work)
        for name in ("warm", "ref"):  # the first fills a warm cache as every later run finds it; timed: the second
            t0 = time.perf_counter()
            ref = run(work / name)
            duration = time.perf_counter() - t0
            if ref.returncode != 0:
                sys.exit(f"the uninterrupted run failed (exit {ref.returncode}): {ref.stderr[-500:]}")
        reference = _student(work / "ref")
        if not _same(_student(work / "warm"), reference):
            sys.exit("two uninterrupted runs shipped different students: nothing to compare against")
        print(f"uninterrupted run: {duration:.1f} s ({'an empty' if cold else 'a warm'} cache folder)", flush=True)
        rows = []
        for i in range(args.kills):
            out = work / f"run{i}"
            at = rng.uniform(0.0, duration)
            cmd = [sys.executable, "-m", "kd_compile", *ARGS[args.example], "--out", str(out)]
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    env=_env(cache_of(out.name)), cwd=work)  # fmt: skip
            try:
                proc.wait(timeout=at)
                killed = False  # it finished first
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                killed = True
            res = run(out, "--resume")  # at once: no wait for the killed run's workers
            afresh = res.returncode == 11 and "nothing to resume" in res.stderr
            if afresh:
                res = run(out)
            ok = res.returncode == 0 and "Traceback" not in res.stderr and "internal error" not in res.stderr
            same = ok and _same(_student(out), reference)
            left = sorted(p.name for pat in LEFTOVERS for p in out.glob(pat))
            left += sorted(p.name for p in cache_of(out.name).rglob("*") if p.name.endswith((".partial", ".tmp")))
            row = {
                "kill_at_s": round(at, 2), "killed": killed, "exit": res.returncode, "rerun_afresh": afresh,
                "resumed_final_training": re.search(r"final training [^:]*: resumed at epoch", res.stderr) is not None,
                "resumed_candidate_training": re.search(r"candidate \d+: resumed at epoch", res.stderr) is not None,
                "restored_final_students": "final students restored" in res.stderr,
                "resumed_cache_build": "resumed_views" in _cache_meta(cache_of(out.name)),
                "same_student": same, "left_behind": left,
            }  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
            if not same:
                print(res.stderr[-1500:], file=sys.stderr)
            shutil.rmtree(out, ignore_errors=True)
        summary = {
            "kills": sum(r["killed"] for r in rows),
            "identical_students": sum(r["same_student"] for r in rows),
            "runs": len(rows),
            "went_on_from_an_epoch_checkpoint": sum(r["resumed_final_training"] for r in rows),
            "went_on_from_a_candidate_checkpoint": sum(r["resumed_candidate_training"] for r in rows),
            "restored_kept_final_students": sum(r["restored_final_students"] for r in rows),
            "resumed_a_cache_build": sum(r["resumed_cache_build"] for r in rows),
            "rerun_afresh": sum(r["rerun_afresh"] for r in rows),
            "left_behind": sum(bool(r["left_behind"]) for r in rows),
        }
        print("summary:", json.dumps(summary))
        results.parent.mkdir(parents=True, exist_ok=True)
        results.write_text(json.dumps({
            "command": shlex.join(["python", *sys.argv]), "example": args.example,
            "args": [a.replace(str(ROOT) + "/", "") for a in ARGS[args.example]], "cache": "empty" if cold else "warm",
            "uninterrupted_s": round(duration, 1), "seed": args.seed, "summary": summary, "rows": rows,
        }, indent=1) + "\n")  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
