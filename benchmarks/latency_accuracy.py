"""How well does the roofline predictor rank and size latency on a device it was not fitted on?

Prints, side by side, for the roofline predictor and two one-constant baselines
(latency proportional to FLOPs, latency proportional to parameters): Spearman rank correlation
and median absolute percentage error against measured tables, leave-one-device-out:

* fit on the RTX 3090 timm table, predict the RTX 4090 table (4090 TOML + 3090 constants);
* fit on the RTX 4090 table, predict the RTX 3090 table;
* fit on the RTX 3090 table, predict the Tesla T4 TensorRT fp16 batch-1 table (super-gradients),
  with TensorRT fusion rules and the T4 TOML (launch_scale reset to 1: eager launch costs at
  batch 1024 do not transfer to TensorRT at batch 1).

A baseline's one constant is fitted on the calibration device as seconds per FLOP (or per
parameter) *times that device's peak*, then divided by the held-out device's peak, so it gets
the same device information the predictor gets. Spearman does not depend on that constant.

``--measure``: on a machine with an NVIDIA GPU, time timm models with CUDA events (AMP fp16,
eager) and print the predictor's error for the matching target profile.

Run: ``.venv/bin/python benchmarks/latency_accuracy.py [--models N] [--measure]``
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kd_compile.calibrate import fit_efficiency, kernel_table, layer_costs, prepare, quality
from kd_compile.profilers.roofline import DeviceTerms, Efficiency, KernelTable, fuse, model_times
from kd_compile.targets import get_target

DATA = Path(os.environ.get("KD_LATENCY_DATA", "/work/shared/data/latency"))
T3090 = DATA / "benchmark-infer-amp-nchw-pt240-cu124-rtx3090.csv"
T4090 = DATA / "benchmark-infer-amp-nchw-pt240-cu124-rtx4090.csv"
T4_TRT = DATA / "supergradients_T4_trt_fp16_bs1_classification.csv"

# super-gradients model name -> timm model (same architecture; timm ViTs use patch 16).
SG_TO_TIMM = {
    "vit_base": "vit_base_patch16_224",
    "vit_large": "vit_large_patch16_224",
    "efficientnet_b0": "efficientnet_b0",
    "regnetY200": "regnety_002",
    "regnetY400": "regnety_004",
    "regnetY600": "regnety_006",
    "regnetY800": "regnety_008",
    "resnet18": "resnet18",
    "resnet34": "resnet34",
    "resnet50": "resnet50",
    "mobilenet_v3_large": "mobilenetv3_large_100",
    "mobilenet_v3_small": "mobilenetv3_small_100",
    "mobilenet_v2": "mobilenetv2_100",
}


def _peak(target: str) -> float:
    return get_target(target).peak_for("fp16") * 1e12


def _baselines(table_fit: KernelTable, meas_fit: np.ndarray, params_fit: np.ndarray, fit_target: str,
               table_test: KernelTable, params_test: np.ndarray, test_target: str) -> dict[str, np.ndarray]:
    """FLOPs- and params-proportional predictions on the test set (one constant each)."""
    def totals(t: KernelTable) -> np.ndarray:
        return np.bincount(t.model, weights=t.flops, minlength=t.n_models) * t.batch

    out = {}
    for name, xf, xt in (("flops", totals(table_fit), totals(table_test)),
                         ("params", params_fit * table_fit.batch, params_test * table_test.batch)):
        # Median ratio in log space: the least-absolute-log-error constant.
        k = float(np.exp(np.median(np.log(meas_fit / xf)))) * _peak(fit_target)
        out[name] = k * xt / _peak(test_target)
    return out


def _params(keys: list[str]) -> np.ndarray:
    import json

    from kd_compile.calibrate import LAYER_COSTS

    entries = json.loads(LAYER_COSTS.read_text(encoding="utf-8"))["entries"]
    return np.array([float(entries[k]["params"]) for k in keys])


def _row(label: str, q: dict[str, float]) -> str:
    return f"  {label:<22} spearman {q['spearman']:6.3f}   median |err| {q['median_ape']:6.1f}%   (n={q['n']})"


def leave_one_device_out(models: int | None) -> None:
    keys, rows, costs = prepare([T3090, T4090], "torch", models, verbose=True)
    params = _params(keys)
    tabs = {
        "rtx3090": kernel_table(keys, rows[0], costs, "torch"),
        "rtx4090": kernel_table(keys, rows[1], costs, "torch"),
    }
    fits: dict[str, Efficiency] = {}
    for fit_t, test_t in (("rtx3090", "rtx4090"), ("rtx4090", "rtx3090")):
        tf, mf = tabs[fit_t]
        eff, qfit = fit_efficiency(tf, mf, DeviceTerms.of(get_target(fit_t), "fp16", "torch"))
        fits[fit_t] = eff
        tt, mt = tabs[test_t]
        pred = model_times(tt, DeviceTerms.of(get_target(test_t), "fp16", "torch"), eff)
        print(f"\nfit on {fit_t} ({len(keys)} models, eager AMP fp16), predict {test_t}:")
        print(_row("roofline (held-out)", quality(pred, mt)))
        for name, p in _baselines(tf, mf, params, fit_t, tt, params, test_t).items():
            print(_row(f"{name}-proportional", quality(p, mt)))
        print(_row("roofline (fit set)", qfit))
        print("  constants:", ", ".join(f"{k}={v:.3g}" for k, v in eff.to_dict().items()))
    t4(fits["rtx3090"], keys, rows[0], costs, params)


def t4(eff3090: Efficiency, keys: list[str], rows3090: list, costs: dict, params3090: np.ndarray) -> None:
    with T4_TRT.open(encoding="utf-8") as f:
        recs = list(csv.DictReader(line for line in f if not line.startswith("#")))
    pairs = [(SG_TO_TIMM[r["sg_model_name"]], float(r["t4_hw_ms"]) * 1e-3) for r in recs
             if r["sg_model_name"] in SG_TO_TIMM and r["t4_hw_ms"]]
    tkeys = [f"{m}@224" for m, _ in pairs]
    c = layer_costs(tkeys, verbose=True)
    ok = [i for i, k in enumerate(tkeys) if k in c]
    tkeys = [tkeys[i] for i in ok]
    meas = np.array([pairs[i][1] for i in ok])
    eff = Efficiency.from_dict({**eff3090.to_dict(), "launch_scale": 1.0})
    table = KernelTable.build([fuse(c[k], "tensorrt") for k in tkeys], [1] * len(tkeys))
    pred = model_times(table, DeviceTerms.of(get_target("t4"), "fp16", "tensorrt"), eff)
    print(f"\nfit on rtx3090 (eager AMP), predict T4 TensorRT fp16 batch 1 ({len(tkeys)} models, t4_hw_ms):")
    print("  mapping: " + ", ".join(f"{sg}->{tm}" for sg, tm in SG_TO_TIMM.items()))
    print(_row("roofline (held-out)", quality(pred, meas)))
    tf, mf = kernel_table(keys, rows3090, costs, "torch")
    ptest = _params(tkeys)
    for name, p in _baselines(tf, mf, params3090, "rtx3090", table, ptest, "t4").items():
        print(_row(f"{name}-proportional", quality(p, meas)))
    for k, p, m in zip(tkeys, pred, meas, strict=True):
        print(f"    {k:<28} predicted {p * 1e3:6.2f} ms   measured {m * 1e3:6.2f} ms")


def measure() -> None:
    """Time timm models on the local NVIDIA GPU and compare with the predictor."""
    import torch

    if not torch.cuda.is_available():
        print("\n--measure: skipped (no CUDA GPU on this machine)")
        return
    import timm

    from kd_compile.profilers.base import InputSpec
    from kd_compile.profilers.roofline import RooflineProfiler

    gpu = torch.cuda.get_device_name(0)
    lookup = {"H100": "h100", "H200": "h100", "A100": "a100", "L4": "l4", "A10": "a10", "T4": "t4",
              "4090": "rtx4090", "3090": "rtx3090", "5090": "rtx5090", "2080": "2080ti"}
    target = next((v for k, v in lookup.items() if k in gpu), None)
    if target is None:
        print(f"\n--measure: no target profile for {gpu}; skipped")
        return
    note = " (no H200 profile: H100 numbers, H200 has 4.8 TB/s HBM3e)" if "H200" in gpu else ""
    print(f"\n--measure on {gpu} -> target '{target}'{note}, eager AMP fp16, CUDA events, 10 warm-up + 40 timed")
    names = ["resnet18", "resnet50", "mobilenetv3_large_100", "efficientnet_b0", "convnext_tiny",
             "vit_small_patch16_224", "vit_base_patch16_224", "regnety_016", "densenet121",
             "swin_tiny_patch4_window7_224"]
    pred_all, meas_all = [], []
    for batch in (1, 256):
        prof = RooflineProfiler(target, precision="fp16", runtime="torch", batch=batch)
        for n in names:
            m = timm.create_model(n, pretrained=False).cuda().eval()
            x = torch.randn(batch, 3, 224, 224, device="cuda")
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16):
                for _ in range(10):
                    m(x)
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                torch.cuda.synchronize()
                start.record()
                for _ in range(40):
                    m(x)
                end.record()
                torch.cuda.synchronize()
            ms = start.elapsed_time(end) / 40
            with torch.device("meta"):
                mm = timm.create_model(n, pretrained=False)
            p = prof.profile(mm, InputSpec((3, 224, 224), batch=batch)).latency_ms
            pred_all.append(p)
            meas_all.append(ms)
            err = 100 * (p / ms - 1)
            print(f"    b={batch:<4} {n:<32} predicted {p:8.2f} ms   measured {ms:8.2f} ms   err {err:+6.1f}%")
            del m
            torch.cuda.empty_cache()
    print(_row("roofline vs measured", quality(np.array(pred_all), np.array(meas_all))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=None, help="limit the number of timm models")
    ap.add_argument("--measure", action="store_true", help="also time models on a local NVIDIA GPU")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    print("command:", " ".join([Path(sys.executable).name, *sys.argv]))
    print(f"machine: {platform.node()} {platform.machine()} {platform.processor() or ''} "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}, torch {torch.__version__}")
    print(f"data: {DATA}")
    t0 = time.perf_counter()
    leave_one_device_out(args.models)
    if args.measure:
        measure()
    print(f"\n({time.perf_counter() - t0:.1f}s)")


if __name__ == "__main__":
    main()
