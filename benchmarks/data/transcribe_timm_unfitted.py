"""Transcribe timm's GPU inference benchmarks no fit reads but ``s_compile``'s (RTX 5090, 4090, PRO 6000 Max-Q).

The source (huggingface/pytorch-image-models, Apache-2.0) times its models with its own
``benchmark.py``: ``torch.autocast`` fp16 ("amp"), NCHW, batch 256 or 1024, in eager PyTorch and
compiled by ``torch.compile`` ("-dynamo": TorchInductor). Its ``infer_step_time`` is ms per batch.
This keeps the models the calibration curates (``kd_compile.calibrate.tables.CURATED``) at the
smallest image size measured in all seven tables (the rule ``select_timm`` applies to the fitted
PyTorch 2.4.0 tables), with the table's parameter count in millions: the PyTorch 2.9.1 tables ran
the re-parameterisable models (RepVGG, MobileOne, RepViT) folded and the PyTorch 2.4.0 ones
unfolded, and ``benchmarks/external_check.py`` sets apart the rows of the form it does not profile.

Roles: ``validation`` is the RTX 4090's PyTorch 2.4.0 dynamo table (the stack of the fitted eager
table of that GPU), on which choices about ``torch.compile`` are made and, from its copy in
``kd_compile/calibrate/data``, its one constant ``s_compile`` is fitted; ``test`` are the PyTorch
2.9.1 tables, which no fit reads, on which they are reported.

Run (``<repo>``: a clone of https://github.com/huggingface/pytorch-image-models holding ``COMMIT``)::

    python benchmarks/data/transcribe_timm_unfitted.py <repo> > benchmarks/data/timm_unfitted.csv
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

COMMIT = "90cae8c5ab83d2d7e23b1fb2bab1559bfdcbc7e9"
_PT240 = "PyTorch 2.4.0, CUDA 12.4"
_PT291_130, _PT291_128 = "PyTorch 2.9.1, CUDA 13.0", "PyTorch 2.9.1, CUDA 12.8"
# (role, target, runtime, file under results/, environment as the file name records it)
FILES = (
    ("validation", "rtx4090", "inductor", "benchmark-infer-amp-nchw-pt240-cu124-rtx4090-dynamo.csv", _PT240),
    ("test", "rtx5090", "torch", "benchmark-infer-amp-nchw-pt291-cu130-5090.csv", _PT291_130),
    ("test", "rtx5090", "inductor", "benchmark-infer-amp-nchw-pt291-cu130-5090-dynamo.csv", _PT291_130),
    ("test", "rtx4090", "torch", "benchmark-infer-amp-nchw-pt291-cu128-4090.csv", _PT291_128),
    ("test", "rtx4090", "inductor", "benchmark-infer-amp-nchw-pt291-cu128-4090-dynamo.csv", _PT291_128),
    ("test", "rtx-pro-6000-maxq", "torch", "benchmark-infer-amp-nchw-pt291-cu130-pro6000maxq.csv", _PT291_130),
    ("test", "rtx-pro-6000-maxq", "inductor", "benchmark-infer-amp-nchw-pt291-cu130-pro6000maxq-dynamo.csv",
     _PT291_130),
)
HEADER = """\
# huggingface/pytorch-image-models (Apache-2.0), commit {commit}, results/: timm's benchmark.py,
# torch.autocast fp16 ('amp'), NCHW, batch = infer_batch_size; runtime torch = eager, inductor = torch.compile
# (the '-dynamo' files). ms_per_batch = infer_step_time, param_count_m = param_count. Models: CURATED at the
# smallest size in all seven tables. role: validation (choices made, s_compile fitted) or test (reported).
# Written by benchmarks/data/transcribe_timm_unfitted.py; read by benchmarks/external_check.py only."""


def main(repo: str) -> int:
    from kd_compile.calibrate.tables import CURATED

    tables = []
    for role, device, runtime, name, env in FILES:
        path = f"results/{name}"
        text = subprocess.run(["git", "-C", repo, "show", f"{COMMIT}:{path}"], check=True,
                              capture_output=True, text=True).stdout
        rows = {(r["model"], int(r["infer_img_size"])): r for r in csv.DictReader(text.splitlines())}
        tables.append((role, device, runtime, path, env, rows))
    print(HEADER.format(commit=COMMIT))
    out = csv.writer(sys.stdout, lineterminator="\n")
    out.writerow(["role", "device", "runtime", "model", "spec", "precision", "batch", "ms_per_batch",
                  "param_count_m", "environment", "file"])
    for model in CURATED:
        sizes = [s for (m, s) in tables[0][-1] if m == model and all((m, s) in t[-1] for t in tables)]
        if not sizes:
            continue
        size = min(sizes)
        for role, device, runtime, path, env, rows in tables:
            r = rows[(model, size)]
            out.writerow([role, device, runtime, model, f"timm:{model}@{size}", "fp16", int(r["infer_batch_size"]),
                          float(r["infer_step_time"]), float(r["param_count"]), env, path])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
