"""Transcribe ryujaehun/pytorch-gpu-benchmark's single-GPU inference tables into one CSV.

The source (MIT) times torchvision models in eager PyTorch at batch 12, 224 px, on one GPU, with
``torch.backends.cudnn.benchmark = True``: 5 warm-up and 50 timed batches, each timed with
``time.time()`` between two ``torch.cuda.synchronize()`` around ``model(img.to('cuda'))`` (so each
figure includes copying the batch from pageable host memory to the GPU). Its CSVs hold one
column per model and one row per timed batch, in ms. This keeps the median of each column.

Run (``<repo>``: a clone of https://github.com/ryujaehun/pytorch-gpu-benchmark at ``COMMIT``)::

    python benchmarks/data/transcribe_pytorch_gpu_benchmark.py <repo> > benchmarks/data/pytorch_gpu_benchmark_b12.csv
"""

from __future__ import annotations

import csv
import statistics
import subprocess
import sys

COMMIT = "3f47a9e2a43ca751ffade0add700b54b00e44bf0"
# target -> (folder/file prefix, float file tag, half file tag, environment as the source records it:
# its system_info.txt per run, the README for the A100's container; the 1080 Ti run records none)
FILES = {
    "1080ti": ("results/1080TI/GeForce GTX 1080 Ti_", "single", "half", "not recorded"),
    "titan-xp": ("results/TITANXP/TITAN Xp_1_gpus__", "float", "half", "CUDA 10.2, cuDNN 7605"),
    "2080ti": ("new_results/GeForce RTX 2080 Ti_1_gpus__", "float", "half", "CUDA 10.0, cuDNN 7600"),
    "titan-rtx": ("results/TitanRTX/TITAN RTX_1_gpus__", "float", "half", "CUDA 10.2, cuDNN 7605"),
    "a100": ("results/dgx-a100/A100-SXM4-40GB_1_gpus__", "float", "half",
             "A100-SXM4-40GB, NGC pytorch:20.10, CUDA 11.1, cuDNN 8004"),
}


def _name(prefix: str, tag: str) -> str:
    # the older tables (1080 Ti) are named "<gpu>_<tag>_model_inference_benchmark.csv"
    return f"{prefix}{tag}_model_inference_benchmark.csv"


def main(repo: str) -> int:
    out = csv.writer(sys.stdout, lineterminator="\n")
    print("# ryujaehun/pytorch-gpu-benchmark (MIT), commit " + COMMIT + ": eager PyTorch inference, torchvision")
    print("# models, batch 12, 224 px, cudnn.benchmark on; median of 50 timed batches (each timed around")
    print("# model(img.to('cuda')), i.e. with the batch's copy from pageable host memory). precision fp32 =")
    print("# the source's 'float'/'single' (model.float()), fp16 = its 'half' (model.half()). Written by")
    print("# benchmarks/data/transcribe_pytorch_gpu_benchmark.py; read by benchmarks/external_check.py only.")
    out.writerow(["device", "model", "spec", "precision", "batch", "ms_per_batch", "environment", "file"])
    for device, (prefix, f32, f16, env) in FILES.items():
        for precision, tag in (("fp32", f32), ("fp16", f16)):
            path = _name(prefix, tag)
            text = subprocess.run(["git", "-C", repo, "show", f"{COMMIT}:{path}"], check=True,
                                  capture_output=True, text=True).stdout
            rows = list(csv.reader(text.splitlines()))
            head, body = rows[0], [r for r in rows[1:] if r]
            for j, model in enumerate(head):
                if not model or model.startswith("Unnamed"):
                    continue
                vals = [float(r[j]) for r in body if j < len(r) and r[j]]
                out.writerow([device, model, f"torchvision:{model}", precision, 12,
                              round(statistics.median(vals), 3), env, path])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
