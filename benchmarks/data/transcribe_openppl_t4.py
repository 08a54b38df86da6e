"""Transcribe OpenPPL's T4 table of TensorRT 8 batch-1 latencies (torchvision models) into one CSV.

OpenPPL's ppl.nn (Apache-2.0) documents, in ``docs/en/cuda-doc/benchmark_tool.md``, batch-1 latencies
on a Tesla T4 of torchvision's model zoo exported to ONNX ("dynamic model created by pytorch model
zoo"; a ``_opt`` suffix marks a graph simplified before the run: the same network), timed at 1 x 3 x
224 x 224 after 400 warm-up runs, for its own engine (PPL) and for TensorRT 8, each in fp16 and int8.
Only the TensorRT columns are kept: ``TRT-8(fp16)`` and ``TRT-8(int8)``, ms per batch of one. The same
file's A100 table is left out: its rows are not in its model column's order (DenseNet-161 at 0.61 ms
against DenseNet-121 at 1.48 ms, VGG-16 at 9.87 ms against VGG-13's 0.94 ms), so no row can be matched
to its model.

Run (``<repo>``: a clone of https://github.com/OpenPPL/ppl.nn at ``COMMIT``)::

    python benchmarks/data/transcribe_openppl_t4.py <repo> > benchmarks/data/openppl_t4_trt_b1.csv
"""

from __future__ import annotations

import csv
import subprocess
import sys

COMMIT = "387811413553e65a5314838183d0672e783b6cfb"  # the last change to the file (2022-09-20)
PATH = "docs/en/cuda-doc/benchmark_tool.md"
SECTION = "## PPL and TRT Bechmark for single batch on T4"  # the source's spelling
COLUMNS = {"TRT-8(fp16)": "fp16", "TRT-8(int8)": "int8"}


def table(markdown: str) -> list[dict[str, str]]:
    """The rows of the first markdown table after ``SECTION``, as dicts by header cell."""
    lines = markdown.split(SECTION, 1)[1].split("\n## ", 1)[0].splitlines()
    cells = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines if ln.strip().startswith("|")]
    head, body = cells[0], [r for r in cells[1:] if not set("".join(r)) <= set("-: ")]
    return [dict(zip(head, r, strict=True)) for r in body]


def main(repo: str) -> int:
    text = subprocess.run(["git", "-C", repo, "show", f"{COMMIT}:{PATH}"], check=True, capture_output=True,
                          text=True).stdout
    print(f"# OpenPPL/ppl.nn (Apache-2.0), commit {COMMIT}: {PATH}, \"PPL and TRT Bechmark for single batch")
    print("# on T4\": TensorRT 8 on a Tesla T4, batch 1, 1x3x224x224 (every model, Inception v3 too), 400 warm-up")
    print("# runs, torchvision models exported to ONNX (a _opt suffix: the graph simplified; the same network);")
    print("# ms per batch of one. Only the TRT-8 columns (fp16, int8). Written by")
    print("# benchmarks/data/transcribe_openppl_t4.py; read by benchmarks/external_check.py only.")
    out = csv.writer(sys.stdout, lineterminator="\n")
    out.writerow(["device", "model", "spec", "runtime", "precision", "batch", "ms_per_batch", "source_column"])
    rows = table(text)
    for column, precision in COLUMNS.items():
        for r in rows:
            name = r["model name"]
            model = name.removesuffix("_opt")
            spec = f"torchvision:{model}" + ("@224" if model == "inception_v3" else "")  # its default is 299 px
            out.writerow(["t4", name, spec, "tensorrt", precision, 1, r[column], column])
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:]))
