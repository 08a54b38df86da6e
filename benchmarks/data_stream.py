"""Benchmark: the streamed ImageFolder loader vs torchvision's ImageFolder + DataLoader, and peak
memory on a folder and on one ten times larger.

Claims checked (issue 15, streaming data):
  1. Throughput: images/s of one training epoch through ``kd_compile.data.stream`` (PIL decode,
     ``transforms.v2`` RandomResizedCrop + flip seeded per sample, uint8 batches) against a
     plain ``torchvision.datasets.ImageFolder`` + ``DataLoader`` with the same workers, batch
     size and transforms, on the same PNG folder.
  2. Memory does not grow with the dataset: peak RSS of the streamed loader (its process and its
     largest worker) on N and 10N images stays flat, while the in-memory loader
     (``load_data``, the path kept for small sets) grows with N.

Each case runs in a fresh subprocess of a small parent and reads its own peak RSS
(``resource.getrusage`` and /proc's VmHWM), and the VmHWM of its loader worker before the
worker exits (a forked worker's figure includes the pages it shares with its parent). The
folders (64-px RGB glyph PNGs, ``kd_compile.data.render_glyphs``) are built once under
``--root``. Results go to ``benchmarks/results/data_stream.json``.

    .venv/bin/python benchmarks/data_stream.py [--n 600] [--workers 1] [--batch 128] [--root /tmp/kd-data-stream]
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

import numpy as np

HERE = Path(__file__).resolve().parent
SIZE = 64
CLASSES = 10


def build_folder(root: Path, n: int, seed: int = 0) -> Path:
    """A PNG ImageFolder of ``n`` coloured 64-px glyphs in class subfolders (kept if complete)."""
    from PIL import Image

    from kd_compile.data import render_glyphs

    done = root / ".complete"
    if done.is_file() and done.read_text() == str(n):
        return root
    x, y = render_glyphs(n, size=32, seed=seed, classes=CLASSES)
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, size=(n, 2, 3)).astype(np.float32)
    for i in range(n):
        g = np.asarray(Image.fromarray(x[i, 0]).resize((SIZE, SIZE), Image.Resampling.BICUBIC), np.float32)
        rgb = colours[i, 1] + (colours[i, 0] - colours[i, 1]) * (g[..., None] / 255.0)
        d = root / f"c{int(y[i]):02d}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb.round().clip(0, 255).astype(np.uint8)).save(d / f"{i:06d}.png")
    done.write_text(str(n))
    return root


def _hwm_mb(pid: int | str = "self") -> float:
    """Peak resident set (VmHWM) of a live process in MB, from /proc (0 when unreadable)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return 0.0


def _peak(worker_mb: float = 0.0) -> dict[str, float]:
    """This process's peak RSS: ``resource.getrusage`` (the case runs in a fresh subprocess started
    by a small parent, so the high-water mark is its own) and /proc's VmHWM, which resets at exec."""
    import resource

    rusage_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"peak_rss_mb": round(max(rusage_mb, _hwm_mb()), 1), "peak_worker_rss_mb": round(worker_mb, 1)}


def case(kind: str, folder: str, workers: int, batch: int) -> dict[str, object]:
    """One measurement, run inside a fresh subprocess; prints its JSON line."""
    import torch

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    out: dict[str, object] = {"kind": kind, "folder": folder, "workers": workers, "batch": batch}
    if kind == "memory":
        from kd_compile.data import load_data

        data = load_data(folder, image_size=SIZE, channels=3)
        out["images"] = int(data.x_train.shape[0] + data.x_val.shape[0])
        out["load_seconds"] = round(time.perf_counter() - t0, 2)
        out.update(_peak())
        return out
    if kind == "stream":
        from kd_compile.data.stream import open_stream, view_seed

        data = open_stream(folder, image_size=SIZE, channels=3, workers=workers, mean=(0.5,) * 3, std=(0.5,) * 3)
        out["index_seconds"] = round(time.perf_counter() - t0, 2)
        n = data.size("train")
        order = np.random.default_rng(0).permutation(n)
        batches = [[(int(i), view_seed(0, int(i), 0)) for i in order[s : s + batch]] for s in range(0, n, batch)]
        loader = data.loader("train", batch_size=batch, batches=batches, train=True)
    else:
        from torchvision import datasets
        from torchvision.transforms import v2

        tf = v2.Compose(
            [v2.RandomResizedCrop((SIZE, SIZE), scale=(0.25, 1.0), antialias=True), v2.RandomHorizontalFlip(),
             v2.PILToTensor()]
        )  # fmt: skip
        ds = datasets.ImageFolder(folder, transform=tf)
        out["index_seconds"] = round(time.perf_counter() - t0, 2)
        n = len(ds)
        loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers)
    t1 = time.perf_counter()
    seen = 0
    it = iter(loader)
    worker_mb = 0.0
    for b, (xb, *_) in enumerate(it):
        seen += int(xb.shape[0])
        if b % 8 == 0:  # the workers' own peaks, read while they live (shared pages from the fork count)
            worker_mb = max([worker_mb, *(_hwm_mb(w.pid) for w in getattr(it, "_workers", []))])
    secs = time.perf_counter() - t1
    del it, loader
    out.update(images=seen, epoch_seconds=round(secs, 2), images_per_s=round(seen / secs, 1))
    out.update(_peak(worker_mb))
    return out


def run_case(kind: str, folder: Path, workers: int, batch: int) -> dict[str, object]:
    cmd = [sys.executable, __file__, "--case", kind, "--folder", str(folder), "--workers", str(workers),
           "--batch", str(batch)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict[str, object]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=600, help="images of the small folder (the large one has 10x)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--root", type=Path, default=Path("/tmp/kd-data-stream"))
    ap.add_argument("--out", type=Path, default=HERE / "results" / "data_stream.json")
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.case and args.case != "build":
        print(json.dumps(case(args.case, args.folder, args.workers, args.batch)))
        return {}
    if args.case == "build":
        build_folder(Path(args.folder), args.n)
        return {}
    t0 = time.perf_counter()
    folders: dict[str, Path] = {}
    for m in (1, 10):
        # built in a subprocess: this parent stays small, so no case inherits a high-water mark
        folder = args.root / f"n{m * args.n}"
        subprocess.run([sys.executable, __file__, "--case", "build", "--folder", str(folder), "--n", str(m * args.n)],
                       check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
        folders[f"{m}N"] = folder
    print(f"folders ready in {time.perf_counter() - t0:.0f}s: {', '.join(str(f) for f in folders.values())}")
    rows = []
    for label, folder in folders.items():
        for kind in ("stream", "torchvision", "memory"):
            r = run_case(kind, folder, args.workers, args.batch)
            r["size"] = label
            rows.append(r)
            rate = f"{r['images_per_s']:>8.1f} img/s" if "images_per_s" in r else " " * 14
            print(f"{label:>3} {kind:<12} {r['images']:>6} images {rate}  peak RSS {r['peak_rss_mb']:>7.1f} MB"
                  f" (largest worker {r['peak_worker_rss_mb']:.1f} MB)")  # fmt: skip

    def peak(kind: str, size: str) -> float:
        return next(float(r["peak_rss_mb"]) for r in rows if r["kind"] == kind and r["size"] == size)

    def rate(kind: str, size: str) -> float:
        return next(float(r["images_per_s"]) for r in rows if r["kind"] == kind and r["size"] == size)

    summary = {
        "stream_vs_torchvision_speed": {s: round(rate("stream", s) / rate("torchvision", s), 3) for s in folders},
        "stream_peak_rss_growth_10x": round(peak("stream", "10N") / peak("stream", "1N"), 3),
        "memory_peak_rss_growth_10x": round(peak("memory", "10N") / peak("memory", "1N"), 3),
    }
    print(json.dumps(summary))
    result = {
        "benchmark": "data_stream",
        "command": "python benchmarks/data_stream.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "n": args.n,
        "workers": args.workers,
        "batch": args.batch,
        "rows": rows,
        "summary": summary,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
