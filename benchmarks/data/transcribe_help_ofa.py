"""Transcribe HELP's Once-for-All GPU latencies for a seeded sample of its 5,000 subnets into one CSV.

HELP (HayeonLee/HELP, MIT) publishes, beside its NAS-Bench-201 and FBNet tables (which the
calibration fits, as ``../shared/data/latency/help-*-latency.csv``), the latencies of 5,000
Once-for-All MobileNetV3 subnets (``data/ofa/ofa_archs.pt``; 128-224 px, ImageNet-size) on an RTX
2080 Ti, Titan RTX, Titan Xp and V100 at batch 1, 32 and 64: ``data/ofa/latency/<gpu>_<batch>.pt``,
each a list of 5,000 milliseconds per batch in the order of ``ofa_archs.pt`` (HELP's ``loader.py``
indexes both by the same position). HELP does not document the runtime; like its other GPU
tables the figures behave as eager PyTorch in fp32, and are read so. The subnets' encodings come
from ``../shared/data/latency/ofa-architectures.csv`` (``arch_index`` = that position), written
from the same ``ofa_archs.pt``. The calibration reads the RTX 2080 Ti, Titan RTX and Titan Xp columns of
a sample of its subnets (``kd_compile.calibrate.tables.read_help_ofa``); ``benchmarks/external_check.py``
predicts the other subnets on all four GPUs (the V100 is in no fit).

Run (``<repo>``: a clone of https://github.com/HayeonLee/HELP at ``COMMIT``)::

    python benchmarks/data/transcribe_help_ofa.py <repo> ../shared/data/latency/ofa-architectures.csv \\
        > kd_compile/calibrate/data/help-ofa-latency.csv
"""

from __future__ import annotations

import csv
import io
import random
import subprocess
import sys

COMMIT = "45f70eb"
GPUS = {"2080ti": "2080ti", "titan_rtx": "titan-rtx", "titan_xp": "titan-xp", "v100": "v100"}  # file -> target
BATCHES = (1, 32, 64)
SAMPLE, SEED = 500, 0  # subnets kept, drawn without replacement by random.Random(SEED)


def _latencies(repo: str, gpu: str, batch: int) -> list[float]:
    import torch

    raw = subprocess.run(["git", "-C", repo, "show", f"{COMMIT}:data/ofa/latency/{gpu}_{batch}.pt"], check=True,
                         capture_output=True).stdout
    return [float(x) for x in torch.load(io.BytesIO(raw), weights_only=True)]  # a list of floats: nothing else loads


def main(repo: str, archs_csv: str) -> int:
    with open(archs_csv, newline="") as f:
        archs = {int(r["arch_index"]): r for r in csv.DictReader(f)}
    lat = {(g, b): _latencies(repo, g, b) for g in GPUS for b in BATCHES}
    assert all(len(v) == len(archs) for v in lat.values()), "every latency list holds one value per subnet"
    keep = sorted(random.Random(SEED).sample(sorted(archs), SAMPLE))
    print(f"# HayeonLee/HELP (MIT), commit {COMMIT}: data/ofa/latency/<gpu>_<batch>.pt, ms per batch, for a")
    print(f"# sample of {SAMPLE} of its 5,000 Once-for-All MobileNetV3 subnets (random.Random({SEED}).sample); runtime")
    print("# not documented by HELP (read as eager PyTorch fp32, as its other GPU tables). spec = kd-compile's")
    print("# ofa:<resolution>/<depths>/<active_blocks> of ofa-architectures.csv. Written by")
    print("# benchmarks/data/transcribe_help_ofa.py; read by kd_compile.calibrate.tables.read_help_ofa (fits: no")
    print("# V100) and benchmarks/external_check.py (the subnets no fit reads).")
    out = csv.writer(sys.stdout, lineterminator="\n")
    cols = [(g, b) for g in GPUS for b in BATCHES]
    out.writerow(["arch_index", "spec", *(f"{GPUS[g]}_b{b}_ms" for g, b in cols)])
    for i in keep:
        a = archs[i]
        out.writerow([i, f"ofa:{a['resolution']}/{a['depths']}/{a['active_blocks']}",
                      *(f"{lat[c][i]:.4g}" for c in cols)])
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
