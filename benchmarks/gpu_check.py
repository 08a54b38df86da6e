"""Benchmark: the GPU paths in one short run, for a session that has a GPU lent for minutes.

Three parts, each written to the results file as soon as it is done (a run stopped at its time
limit keeps what it measured):

1. ``environment``: torch, the GPU, ONNX Runtime's providers, whether TensorRT imports.
2. ``latency``: for the bundled example's teacher, timm and torchvision models and one
   architecture from each latency table's family (``nb201:``, ``fbnet:``, ``ofa:``), at batch 1
   and 32: the latency *measured* here in eager PyTorch (``kd_compile.profile(spec,
   target="local", method="measure", runtime="torch", precision="fp32")``, CUDA events) and in the best
   deployment runtime installed (``runtime=None``: TensorRT, else ONNX Runtime's TensorRT
   provider, else its CUDA provider, in the local target's fp16, else PyTorch with CUDA graphs),
   beside the *prediction* for the target profile whose name is the local GPU's
   (``method="predict"``, eager PyTorch fp32, with its error band), and the absolute percentage
   error of that prediction against the eager measurement; and, where the deployment runtime is a
   graph runtime (TensorRT, ONNX Runtime), its own prediction in that runtime and precision beside
   its measurement.
3. ``training``: training throughput (images/s, over the second epoch so start-up and
   ``torch.compile``'s compilation are left out) of a TRADE student and timm's ``resnet10t`` at
   64 and 224 px, through the project's own trainer (``kd_compile.distill.train_student``, KD
   against an offline cache), on the CPU and on the GPU, fp32 and bf16 autocast, channels-last,
   with ``torch.compile`` off and on.

Run::

    python benchmarks/gpu_check.py [--quick] [--results benchmarks/results/gpu_check.json]

``--quick`` (two models, batch 1, one size, fewer images; results in the temporary folder)
checks the script on a machine without a GPU, where the deployment runtime is ONNX Runtime on
the CPU, nothing is predicted (no GPU profile matches) and only CPU rows are trained. The
printed lines and the JSON are what a note quotes; nothing here is a README figure until a run
on a GPU is checked in.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results" / "gpu_check.json"
TEACHER = ROOT / "examples" / "glyphs" / "teacher.pt"

NB201 = "nb201:|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
FBNET_OPS = ["k3_e1", "k3_e6", "k5_e6", "k3_e3", "k5_e3", "k3_e1_g2"] * 3 + ["k5_e1", "skip", "k5_e1_g2", "k3_e6"]
MODELS = [
    "timm:resnet18",
    "timm:resnet50",
    "timm:resnet10t",
    "timm:efficientnet_b0",
    "timm:mobilenetv3_large_100",
    "timm:regnety_016",
    "timm:convnext_tiny",
    "timm:repvgg_a0",
    "torchvision:mobilenet_v2",
    NB201,
    "fbnet:" + "|".join(FBNET_OPS),
    "ofa:224/2-2-2-2-2/k3e3-k3e3|k5e4-k5e4|k3e6-k3e6|k5e6-k5e6|k7e6-k7e6",
]
QUICK_MODELS = ["timm:resnet10t", NB201]


def _save(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, default=str) + "\n", encoding="utf-8")


def _g(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def environment() -> dict[str, Any]:
    from kd_compile.latency import local_gpu_name
    from kd_compile.profilers.onnxrt import available_providers

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu": local_gpu_name(),
        "cpu_threads": torch.get_num_threads(),
        "onnxruntime_providers": sorted(available_providers()),
    }
    try:
        import tensorrt

        env["tensorrt"] = tensorrt.__version__
    except Exception as exc:  # noqa: BLE001 -- recorded, not fatal
        env["tensorrt"] = f"not importable ({_why(exc)})"
    return env


def matching_target() -> str | None:
    """The registered target profile that is the local GPU (``kd_compile.latency.local_gpu_profile``)."""
    from kd_compile.latency import local_gpu_profile

    t = local_gpu_profile()
    return None if t is None else t.name


def _profile(spec: str, **kw: Any) -> dict[str, Any]:
    import kd_compile

    t0 = time.perf_counter()
    try:
        d = kd_compile.profile(spec, **kw)
    except Exception as exc:  # noqa: BLE001 -- one model's failure is a row, not the end of the run
        return {"error": _why(exc), "seconds": time.perf_counter() - t0}
    keep = ("latency_ms", "cv", "method", "runtime", "precision", "device", "params", "flops")
    out = {k: d.get(k) for k in keep if k in d}
    band = (d.get("extra") or {}).get("error_band")
    if band is not None:
        out["error_band"] = band
    return {**out, "seconds": time.perf_counter() - t0}


def latency(models: list[str], batches: list[int], target: str | None) -> list[dict[str, Any]]:
    rows = []
    for spec in models:
        for b in batches:
            row: dict[str, Any] = {"model": spec, "batch": b}
            row["eager"] = _profile(spec, target="local", method="measure", runtime="torch", precision="fp32", batch=b)
            row["deploy"] = _profile(spec, target="local", method="measure", batch=b)
            if target is not None:
                row["predicted"] = _profile(
                    spec, target=target, method="predict", runtime="torch", precision="fp32", batch=b
                )
                m, p = row["eager"].get("latency_ms"), row["predicted"].get("latency_ms")
                if m and p:
                    row["ape_vs_eager"] = abs(p - m) / m
                d = row["deploy"]
                if d.get("runtime") in ("onnxruntime", "tensorrt") and d.get("latency_ms"):
                    # the graph runtime's own prediction (ONNX Runtime's is unvalidated), beside its measurement
                    pd = _profile(spec, target=target, method="predict", runtime=d["runtime"],
                                  precision=d.get("precision") or "fp32", batch=b)
                    row["predicted_deploy"] = pd
                    if pd.get("latency_ms"):
                        row["ape_vs_deploy"] = abs(pd["latency_ms"] - d["latency_ms"]) / d["latency_ms"]
            rows.append(row)
            e, d = row["eager"], row["deploy"]
            print(
                f"  {spec[:40]:40} b{b:<3} eager {_g(e.get('latency_ms') or e.get('error'))} ms  "
                f"deploy {_g(d.get('latency_ms') or d.get('error'))} ms ({d.get('runtime')} {d.get('precision')})  "
                f"predicted {_g(row.get('predicted', {}).get('latency_ms'))} ms  APE {_g(row.get('ape_vs_eager'))}  "
                f"deploy predicted {_g(row.get('predicted_deploy', {}).get('latency_ms'))} ms  "
                f"APE {_g(row.get('ape_vs_deploy'))}",
                flush=True,
            )
    return rows


def _student(name: str, size: int, classes: int) -> torch.nn.Module:
    if name == "trade":
        from kd_compile.students import create_space

        space = create_space("trade", input_shape=(3, size, size), num_classes=classes)
        return space.build(space.sample(np.random.default_rng(0)))
    import timm

    return timm.create_model(name, pretrained=False, num_classes=classes)


def training(sizes: list[int], n_images: int, quick: bool) -> list[dict[str, Any]]:
    from kd_compile.data import DataBundle
    from kd_compile.distill import TeacherCache, TrainConfig, train_student

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    variants = [("fp32", "off", False), ("bf16+cl", "bf16", False), ("bf16+cl+compile", "bf16", True)]
    if quick:
        variants = variants[:2]
    rows = []
    classes = 10
    for size in sizes:
        g = torch.Generator().manual_seed(0)
        n = n_images if size <= 64 else max(256, n_images // 4)
        x = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
        y = torch.randint(0, classes, (n,), generator=g)
        data = DataBundle(
            name=f"synthetic{size}",
            x_train=x,
            y_train=y,
            x_val=x[:128],
            y_val=y[:128],
            num_classes=classes,
            class_names=[str(i) for i in range(classes)],
            mean=(0.5, 0.5, 0.5),
            std=(0.25, 0.25, 0.25),
        )
        teacher = _student("resnet10t", size, classes).eval()
        cache = TeacherCache.build(teacher, data)
        for model_name in ("trade", "resnet10t"):
            for device in devices:
                for label, amp, compile_ in variants:
                    if device == "cpu" and (compile_ or (size > 64 and not quick and label != "fp32")):
                        continue  # CPU: the baseline rows only (compile and bf16 at 224 px take minutes)
                    cfg = TrainConfig(epochs=2, batch_size=64, lr=1e-3, device=device, amp=amp,
                                      channels_last=label != "fp32", compile=compile_, seed=0)  # fmt: skip
                    row: dict[str, Any] = {"model": model_name, "size": size, "device": device, "variant": label,
                                           "images_per_epoch": (n // 64) * 64}  # fmt: skip
                    try:
                        r = train_student(_student(model_name, size, classes), data, cfg, cache)
                        h = r.history
                        second = h[-1]["seconds"] - h[-2]["seconds"] if len(h) >= 2 else r.seconds
                        row.update(images_per_s=row["images_per_epoch"] / second, seconds=r.seconds)
                    except Exception as exc:  # noqa: BLE001 -- recorded per row
                        row["error"] = _why(exc)
                        traceback.print_exc(limit=2)
                    rows.append(row)
                    print(
                        f"  train {model_name:10} {size:3}px {device:4} {label:16} "
                        f"{_g(row.get('images_per_s', row.get('error')))} images/s",
                        flush=True,
                    )
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a short check of the script itself")
    ap.add_argument(
        "--results",
        type=Path,
        default=None,
        help=f"default {RESULTS.relative_to(ROOT)}; with --quick a file in the temporary folder",
    )
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: latency, training")
    args = ap.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    if args.results is None:
        args.results = Path(tempfile.gettempdir()) / "gpu_check_quick.json" if args.quick else RESULTS
    doc: dict[str, Any] = {"command": " ".join(sys.argv), "environment": environment()}
    print(json.dumps(doc["environment"]), flush=True)
    _save(args.results, doc)
    target = matching_target()
    doc["predicted_target"] = target
    if "latency" not in skip:
        models = QUICK_MODELS if args.quick else [str(TEACHER)] * TEACHER.exists() + MODELS
        doc["latency"] = latency(models, [1] if args.quick else [1, 32], target)
        apes = [r["ape_vs_eager"] for r in doc["latency"] if "ape_vs_eager" in r]
        if apes:
            doc["latency_summary"] = {
                "n": len(apes),
                "median_ape_vs_eager": float(np.median(apes)),
                "within_35": float(np.mean(np.asarray(apes) <= 0.35)),
            }
            print("latency summary", doc["latency_summary"], flush=True)
        _save(args.results, doc)
    if "training" not in skip:
        doc["training"] = training([32] if args.quick else [64, 224], 128 if args.quick else 4096, args.quick)
        _save(args.results, doc)
    print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
