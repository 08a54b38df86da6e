"""Measured tables of this machine's CPU (ONNX Runtime; eager PyTorch with ``--runtime torch``), and the
``cpu`` target's calibration fitted on them.

The ``cpu`` target is measured wherever kd-compile runs; it is predicted only when asked
(``--method predict``, ``--latency predict``), and until this table such a prediction carried no
error band ("unvalidated"): no measured table stood for a CPU. This script measures one, as a user's
``kd-compile profile timm:<name> --target cpu --image-size N`` measures (``kd_compile.profile``:
the ONNX export, ONNX Runtime's CPU provider, fp32, batch 1, its default threads and timing
policy), for curated timm models at 96-224 px (each model at one size, the convnets spread over
the sizes, the fixed-size transformers at theirs), beside what the predictor said before any CPU
table existed. ``profile`` measures a re-parameterisable model (RepVGG, MobileOne, RepViT, FastViT)
folded, as it deploys; its row says so (``deploy_form``) and the fit counts it folded too.

``--write-calibration`` then fits the ``cpu`` target on the table with ``kd-compile calibrate``'s own
function (``kd_compile.calibrate.write.calibrate``: the all-device constants kept but
``fit.CPU_FITTED``, the depthwise efficiency, which a CPU's table fits; the device scales fitted; the
band the 5-fold held-out error over the table's models, every fold refitted) and writes
``kd_compile/targets/calibration/cpu.json``, the file ``--method predict`` on ``cpu`` reads. Printed
beside it for comparison: the same held out with the scales alone fitted (as a GPU's own table is) and
with the scales pulled toward 1 as a GPU's are.

The VM is shared, and its speed moves by tens of percent from one minute to the next (a model's
passes lie apart by the ``repeatability`` figures of the results file): each model is measured in
three passes over the whole list, and the table keeps the median of its three times, so one
disturbed pass does not set it. Run alone (it times things)::

    python benchmarks/cpu_table.py --write-calibration

``--runtime torch`` measures the same models as ``kd-compile profile timm:<name> --target cpu --runtime
torch`` does (eager PyTorch, ``torch.inference_mode``, fp32, batch 1, its default threads) into
``cpu-torch-fp32-b1-devvm.csv``, and ``--write-calibration`` merges its scales and band into
``cpu.json`` with the constants the ONNX Runtime table fitted kept (``write._constants_in_use``), so
that table's band stays exact; ONNX Runtime's ``--write-calibration`` rewrites the file and refits the
eager scales from the shipped eager table. Run alone::

    python benchmarks/cpu_table.py --runtime torch --write-calibration

``--small-check`` measures the convnets again at 32/64 px (``SMALL_SIZES``; into
``benchmarks/data/cpu-<runtime>-fp32-b1-devvm-small.csv``, which no fit reads) instead of the table;
every run then prints how far the calibration errs on them, and ``--write-calibration`` keeps that in
the runtime's band (``small_input_check``), which a prediction below the table's 96-256 px quotes.

Prints one line per model (measured ms, predicted ms before the fit and held out after it), the
held-out ratio by family, the passes' spread, then the median absolute error, the share within 35%
and Spearman's rho of each way of predicting; writes the table
(``kd_compile/calibrate/data/cpu-onnxruntime-fp32-b1-devvm.csv``, the machine described in its
header) and ``benchmarks/results/cpu_table.json`` (``cpu_table_torch.json`` and its own table for
``--runtime torch``). ``--from-table`` refits an existing table
without measuring.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RUNTIMES = ("onnxruntime", "torch")


def table_path(runtime: str) -> Path:
    """The shipped measured table of ``runtime`` on this machine's CPU."""
    return ROOT / "kd_compile" / "calibrate" / "data" / f"cpu-{runtime}-fp32-b1-devvm.csv"


def small_table_path(runtime: str) -> Path:
    """The models measured below the table's sizes (``SMALL_SIZES``), a check no fit reads."""
    return ROOT / "benchmarks" / "data" / f"cpu-{runtime}-fp32-b1-devvm-small.csv"


def results_path(runtime: str) -> Path:
    name = "cpu_table.json" if runtime == "onnxruntime" else f"cpu_table_{runtime}.json"
    return ROOT / "benchmarks" / "results" / name


TABLE = table_path("onnxruntime")
RESULTS = results_path("onnxruntime")
CALIBRATION = ROOT / "kd_compile" / "targets" / "calibration" / "cpu.json"
SIZES = (96, 128, 160, 192, 224)
SMALL_SIZES = (32, 64)  # the check below them (--small-check): the convnets again, alternating
# curated timm models (kd_compile.calibrate.tables.CURATED) an ONNX Runtime run on two cores takes
# at most a few hundred ms per image; convnets spread over SIZES in this order
CONVNETS = (
    "resnet10t", "resnet14t", "resnet18", "resnet26", "resnet34", "resnet50", "resnet50d", "seresnet50",
    "ecaresnet50d", "resnext50_32x4d", "dla34", "densenet121", "repvgg_a2", "gernet_s",
    "cspresnet50", "hrnet_w18_small", "mobilenetv2_050", "mobilenetv2_100", "mobilenetv2_140",
    "mobilenetv3_small_050", "mobilenetv3_small_100", "mobilenetv3_large_075", "mobilenetv3_large_100",
    "mnasnet_small", "mnasnet_100", "fbnetc_100", "spnasnet_100", "lcnet_050", "lcnet_100", "tinynet_a",
    "tinynet_c", "tinynet_e", "ghostnet_100", "efficientnet_b0", "efficientnet_b1", "efficientnet_lite0",
    "mixnet_s", "rexnet_100", "regnetx_002", "regnetx_004", "regnetx_016", "regnety_002", "regnety_004",
    "regnety_008", "regnety_016", "convnext_atto", "convnext_femto", "convnext_pico", "mobileone_s0",
    "repvit_m1",
)
# models measured at their own input size: position embeddings, windows; timm's VGG head (a 7x7
# conv after an adaptive pool, which ONNX export refuses where the pool's output does not divide its input)
FIXED = ("vgg11", "vit_tiny_patch16_224", "deit_tiny_patch16_224", "vit_small_patch32_224", "levit_128", "mobilevit_xs",
         "efficientvit_b0", "poolformer_s12", "resmlp_12_224", "tiny_vit_5m_224", "fastvit_t8")


def plan() -> list[tuple[str, int | None]]:
    """(model, image size or None for the model's own) in the order measured."""
    return [(m, SIZES[i % len(SIZES)]) for i, m in enumerate(CONVNETS)] + [(m, None) for m in FIXED]


def small_plan() -> list[tuple[str, int | None]]:
    """The convnets at ``SMALL_SIZES``: the check of what the calibration says below its sizes."""
    return [(m, SMALL_SIZES[i % len(SMALL_SIZES)]) for i, m in enumerate(CONVNETS)]


def machine() -> dict[str, Any]:
    """What the table was measured on."""
    import onnxruntime
    import torch

    from kd_compile.profilers.onnxrt import physical_cores

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": physical_cores(), "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__, "torch": torch.__version__.split("+")[0],
            "date": time.strftime("%Y-%m-%d")}


def measure(out: Path, limit: int | None = None, passes: int = 3, runtime: str = "onnxruntime",
            models: list[tuple[str, int | None]] | None = None) -> list[dict[str, Any]]:
    """Measure ``models`` (default :func:`plan`; the first ``limit`` of them) in ``runtime`` into ``out``:
    ``passes`` passes over the whole list, the table holding each model's median over them (its
    per-pass times beside it, for the repeatability figure)."""
    import kd_compile

    m = machine()
    t_all = time.perf_counter()
    times: dict[tuple[str, int | None], list[float]] = {}
    info: dict[tuple[str, int | None], dict[str, Any]] = {}
    for p in range(passes):
        print(f"pass {p + 1} of {passes}", flush=True)
        for name, size in (models or plan())[:limit]:
            if p and (name, size) not in times:
                continue  # left out in the first pass
            t0 = time.perf_counter()
            try:
                got = kd_compile.profile(f"timm:{name}", target="cpu", runtime=runtime, image_size=size,
                                         method="measure")
            except Exception as exc:  # noqa: BLE001 - a model that does not export is left out, and said so
                print(f"  {name}: left out ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})", flush=True)
                times.pop((name, size), None)
                continue
            times.setdefault((name, size), []).append(float(got["latency_ms"]))
            info.setdefault((name, size), {"px": size or int(got["input_shape"][-1]), "params": got["params"],
                                           "flops": got["flops"], "folded": bool(got.get("deploy_form"))})
            cv = float(got.get("cv") or 0.0)
            print(f"  {name}@{info[(name, size)]['px']}: {got['latency_ms']:.3f} ms (cv {cv:.3f}, "
                  f"{time.perf_counter() - t0:.1f} s)", flush=True)
    rows: list[dict[str, Any]] = []
    for key, ts in times.items():
        if len(ts) < passes:
            continue
        ms = float(np.median(ts))
        i = info[key]
        rows.append({"model": key[0], "infer_img_size": i["px"], "infer_batch_size": 1,
                     "infer_step_time": round(ms, 4), "infer_samples_per_sec": round(1e3 / ms, 2),
                     "param_count": round(i["params"] / 1e6, 3), "infer_gmacs": round(i["flops"] / 2e9, 4),
                     "passes_ms": ";".join(f"{t:.4f}" for t in ts),
                     # profile measured the folded form (RepVGG, MobileOne, ...): it is counted folded
                     "deploy_form": "folded" if i["folded"] else ""})
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="", encoding="utf-8") as f:
        if runtime == "torch":
            f.write(f"# kd-compile's own measurements: PyTorch {m['torch']} eager on the CPU (torch.inference_mode), "
                    f"fp32, batch 1, torch's default intra-op threads ({m['cores']}), timing policy "
                    "kd_compile.profilers.torch_timer.DEFAULT_TIMING\n")
        else:
            f.write(f"# kd-compile's own measurements: ONNX Runtime {m['onnxruntime']} CPU provider, fp32, batch 1, "
                    f"{m['cores']} intra-op threads (its default), timing policy "
                    "kd_compile.profilers.onnxrt.DEFAULT_TIMING\n")
        f.write(f"# machine: {m['cpu']}, {m['cores']} cores (the kd-compile development VM; targets/cpu.toml); "
                f"torch {m['torch']}, ONNX Runtime {m['onnxruntime']}, Python {m['python']}; {m['date']}\n")
        f.write(f"# written by: python benchmarks/cpu_table.py --runtime {runtime}"
                f"{' --small-check' if models is not None else ''} "
                f"({time.perf_counter() - t_all:.0f} s); "
                f"infer_step_time = median over {passes} passes of each pass's median ms per batch (passes_ms); "
                "random weights, as kd_compile.profile builds timm:<name>\n")
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return rows


def repeatability(table: Path) -> dict[str, Any]:
    """How far a model's passes lie apart: median and 80th percentile of max/min - 1 over the models,
    and the median of (second fastest / fastest - 1), how far its two least disturbed passes lie apart."""
    from kd_compile.calibrate.tables import _dict_rows

    spread, fastest, passes = [], [], 0
    for r in _dict_rows(table):
        ts = sorted(float(t) for t in (r.get("passes_ms") or "").split(";") if t)
        passes = passes or len(ts)
        if len(ts) > 1:
            spread.append(ts[-1] / ts[0] - 1)
            fastest.append(ts[1] / ts[0] - 1)
    if not spread:
        return {"models": 0}
    return {"models": len(spread), "passes": passes, "median_spread": round(float(np.median(spread)), 4),
            "p80_spread": round(float(np.quantile(spread, 0.8)), 4),
            "median_spread_two_fastest": round(float(np.median(fastest)), 4)}


def cpu_problem(table: Path, runtime: str = "onnxruntime") -> tuple[Any, Any]:
    """The table's rows as a calibration problem on the ``cpu`` target, and the all-device fit's
    constants (what the predictor used before any CPU table): built once, for every comparison."""
    from kd_compile.calibrate.problem import build_problem
    from kd_compile.calibrate.tables import read_timm_table
    from kd_compile.profilers.constants import Constants
    from kd_compile.profilers.error_bands import SHARED_FIT, read_calibration
    from kd_compile.targets.profile import get_target

    problem = build_problem(read_timm_table(table, "cpu", runtime, "fp32"), profiles={"cpu": get_target("cpu")})
    return problem, Constants.from_dict(read_calibration(SHARED_FIT.stem)["constants"])


def _by_spec(problem: Any, pred: np.ndarray) -> dict[str, float]:
    return {r.spec: float(p) for r, p in zip(problem.rows, pred, strict=True)}


def predicted_before(problem: Any, constants: Any) -> dict[str, float]:
    """What the predictor said for each row with no CPU table (the all-device fit, unit scales)."""
    from kd_compile.calibrate.fit import predict
    from kd_compile.profilers.constants import DeviceScales

    return _by_spec(problem, predict(problem, np.ones(len(problem.rows), bool), constants, {"cpu": DeviceScales()}))


def held_out(problem: Any, ridge: float | None = None, keep: Any = None) -> dict[str, float]:
    """Each row predicted by the fit on the other folds, as ``kd-compile calibrate`` computes the band
    (``write.fit_own_table``: the CPU's scales and ``fit.CPU_FITTED``, or the scales alone with the
    constants ``keep``), with the pull toward 1 a CPU's scales take (``write.scales_ridge``) or ``ridge``."""
    from kd_compile.calibrate.write import fit_own_table, scales_ridge
    from kd_compile.targets.profile import get_target

    cpu = get_target("cpu")
    return _by_spec(problem, fit_own_table(problem, cpu, scales_ridge(cpu) if ridge is None else ridge, keep=keep)[2])


def ort_constants() -> Any:
    """The constants of the ``cpu`` target's calibration, fitted on its ONNX Runtime table."""
    from kd_compile.profilers.constants import Constants

    return Constants.from_dict(json.loads(CALIBRATION.read_text(encoding="utf-8"))["constants"])


def small_check(runtime: str, write: bool) -> dict[str, Any] | None:
    """The ``cpu`` calibration as written (``CALIBRATION``) on the models measured below its sizes
    (``small_table_path``; no fit reads them): how far it errs there, and the ratios' range. With
    ``write``, kept in the calibration's band of ``runtime`` as ``small_input_check``, which a
    prediction below the band's sizes quotes (``error_bands.size_range_caveat``)."""
    from kd_compile.calibrate.fit import predict
    from kd_compile.calibrate.problem import build_problem
    from kd_compile.calibrate.tables import read_timm_table, timm_spec_parts
    from kd_compile.profilers.constants import Constants, DeviceScales
    from kd_compile.targets.profile import get_target

    table = small_table_path(runtime)
    if not table.is_file():
        return None
    problem = build_problem(read_timm_table(table, "cpu", runtime, "fp32"), profiles={"cpu": get_target("cpu")})
    cal = json.loads(CALIBRATION.read_text(encoding="utf-8"))
    pred = predict(problem, np.ones(len(problem.rows), bool), Constants.from_dict(cal["constants"]),
                   {"cpu": DeviceScales.from_dict(cal["device_scales"])})
    meas = {r.spec: float(t) for r, t in zip(problem.rows, problem.seconds, strict=True)}
    by = _by_spec(problem, pred)
    ratios = [by[k] / meas[k] for k in meas]
    px = [timm_spec_parts(k)[1] for k in meas]
    out = {**summary(meas, by), "min_ratio": round(min(ratios), 4), "max_ratio": round(max(ratios), 4),
           "input_px": [min(px), max(px)], "table": str(table.relative_to(ROOT))}
    if write:
        key = f"{runtime}/fp32/batch1"
        cal["error_bands"][key]["small_input_check"] = {k: out[k] for k in (
            "n", "median_ape", "p80_ape", "median_ratio", "min_ratio", "max_ratio", "input_px", "table")}
        from kd_compile.calibrate.write import _write_json_atomic

        _write_json_atomic(CALIBRATION, cal)  # as kd-compile calibrate writes it
    print(f"below its sizes ({out['input_px'][0]}-{out['input_px'][1]} px, not fitted): n {out['n']}, median error "
          f"{100 * out['median_ape']:.1f}%, p80 {100 * out['p80_ape']:.1f}%, median ratio x{out['median_ratio']:.2f} "
          f"(x{out['min_ratio']:.2f}-{out['max_ratio']:.2f}), Spearman {out['spearman']:.3f}")
    return out


def scales_only(problem: Any, constants: Any) -> dict[str, float]:
    """Each row held out as a GPU's own table is fitted: its scales only, the all-device constants
    kept (``holdout.kfold_on_device``), for comparison with the CPU's own constants."""
    from kd_compile.calibrate.holdout import kfold_on_device
    from kd_compile.calibrate.write import scales_ridge
    from kd_compile.targets.profile import get_target

    return _by_spec(problem, kfold_on_device(problem, "cpu", constants, ridge=scales_ridge(get_target("cpu"))))


def summary(meas: dict[str, float], pred: dict[str, float]) -> dict[str, Any]:
    from scipy.stats import spearmanr

    keys = sorted(set(meas) & set(pred))
    m = np.array([meas[k] for k in keys])
    p = np.array([pred[k] for k in keys])
    ape = np.abs(p - m) / m
    return {"n": len(keys), "median_ape": round(float(np.median(ape)), 4),
            "p80_ape": round(float(np.quantile(ape, 0.8)), 4),
            "within_35": round(float(np.mean(ape <= 0.35)), 4),
            "median_ratio": round(float(np.median(p / m)), 4),
            "spearman": round(float(spearmanr(p, m)[0]), 4)}


def by_family(meas: dict[str, float], pred: dict[str, float]) -> dict[str, dict[str, Any]]:
    """Per architecture family (``calibrate.tables.family_of``): models and median predicted / measured."""
    from kd_compile.calibrate.tables import family_of

    fams: dict[str, list[float]] = {}
    for k in sorted(set(meas) & set(pred)):
        fams.setdefault(family_of(k), []).append(pred[k] / meas[k])
    return {f: {"n": len(r), "median_ratio": round(float(np.median(r)), 4),
                "min_ratio": round(min(r), 4), "max_ratio": round(max(r), 4)} for f, r in sorted(fams.items())}


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--from-table", action="store_true", help="fit the existing table; measure nothing")
    ap.add_argument("--runtime", choices=RUNTIMES, default="onnxruntime",
                    help="the runtime measured: ONNX Runtime's CPU provider or eager PyTorch")
    ap.add_argument("--table", type=Path, default=None,
                    help="the measured table (timm benchmark columns); default: the shipped one of --runtime")
    ap.add_argument("--out", type=Path, default=None, help="where the figures go (JSON)")
    ap.add_argument("--passes", type=int, default=3, help="passes over the models (the table keeps the median)")
    ap.add_argument("--models", type=int, default=None, help="measure only the first N models (a quick look)")
    ap.add_argument("--write-calibration", action="store_true",
                    help=f"write the cpu target's calibration ({CALIBRATION.relative_to(ROOT)})")
    ap.add_argument("--small-check", action="store_true",
                    help="measure the convnets at 32/64 px (a check no fit reads) instead of the table, which is "
                         "refitted as with --from-table")
    args = ap.parse_args()
    args.table = args.table or table_path(args.runtime)
    args.out = args.out or results_path(args.runtime)
    t0 = time.perf_counter()
    if args.small_check and not args.from_table:
        measure(small_table_path(args.runtime), args.models, args.passes, args.runtime, small_plan())
    elif not args.from_table:
        measure(args.table, args.models, args.passes, args.runtime)
    from kd_compile.calibrate.tables import read_timm_table

    meas = {r.spec: r.seconds for r in read_timm_table(args.table, "cpu", args.runtime, "fp32")}
    problem, gpu_constants = cpu_problem(args.table, args.runtime)
    before = predicted_before(problem, gpu_constants)
    # a second runtime's table fits its scales alone, with the constants the ONNX Runtime table fitted
    # (``write._constants_in_use``: the band measured with them stays exact); its own constants beside
    keep = ort_constants() if args.runtime != "onnxruntime" else None
    after = held_out(problem, keep=keep)
    print(f"{'model':34s} {'measured':>10s} {'before':>10s} {'held out':>10s}")
    for k in sorted(meas, key=meas.get):
        b, a = before.get(k, math.nan), after.get(k, math.nan)
        print(f"{k[5:]:34s} {meas[k] * 1e3:9.3f}ms {b * 1e3:9.3f}ms {a * 1e3:9.3f}ms  "
              f"x{b / meas[k]:.2f} -> x{a / meas[k]:.2f}")
    s_before, s_after = summary(meas, before), summary(meas, after)
    # the pull a GPU's own table takes (chosen on GPUs of 600 rows and more), for comparison
    from kd_compile.calibrate.write import shipped_ridge

    gpu_ridge = shipped_ridge()
    s_gpu_ridge = {**summary(meas, held_out(problem, gpu_ridge, keep=keep)), "ridge": gpu_ridge}
    s_own = summary(meas, held_out(problem)) if keep is not None else None
    only = scales_only(problem, gpu_constants)
    s_scales = {**summary(meas, only), "by_family": by_family(meas, only)}
    fam = by_family(meas, after)
    print("held out by family (median predicted / measured, range): " + "; ".join(
        f"{f} x{v['median_ratio']:.2f} (n {v['n']}, x{v['min_ratio']:.2f}-{v['max_ratio']:.2f})"
        for f, v in fam.items()))
    rep = repeatability(args.table)
    if rep["models"]:
        print(f"repeatability: {rep['passes']} passes over {rep['models']} models, max/min - 1 median "
              f"{100 * rep['median_spread']:.1f}%, p80 {100 * rep['p80_spread']:.1f}%; the two fastest passes "
              f"{100 * rep['median_spread_two_fastest']:.1f}% apart (median)")
    own = ("scales, with the ONNX Runtime table's constants" if keep is not None
           else "scales and the CPU's own constants")
    for label, s in (("before (all-device fit, no CPU table)", s_before),
                     (f"held out (5-fold: {own})", s_after),
                     (f"held out, scales pulled as a GPU's (ridge {gpu_ridge:g})", s_gpu_ridge),
                     ("held out, scales only (no constant of the CPU's own)", s_scales),
                     ("held out, the CPU's constants fitted on this table instead", s_own)):
        if s is None:
            continue
        print(f"{label}: n {s['n']}, median error {100 * s['median_ape']:.1f}%, p80 {100 * s['p80_ape']:.1f}%, "
              f"{100 * s['within_35']:.0f}% within 35%, median ratio x{s['median_ratio']:.2f}, "
              f"Spearman {s['spearman']:.3f}")
    command = "python benchmarks/cpu_table.py" + (f" --runtime {args.runtime}" if args.runtime != "onnxruntime" else "")
    command += " --small-check" if args.small_check else ""
    command += " --write-calibration" if args.write_calibration else ""
    table = str(args.table.relative_to(ROOT)) if args.table.is_relative_to(ROOT) else str(args.table)
    doc: dict[str, Any] = {"command": command, "table": table, "runtime": args.runtime,
                           "before": s_before, "held_out": s_after,
                           "held_out_gpu_ridge": s_gpu_ridge, "held_out_scales_only": s_scales,
                           "held_out_by_family": fam, "repeatability": rep,
                           **({"held_out_own_constants": s_own} if s_own else {}),
                           "rows": [{"spec": k, "measured_ms": round(meas[k] * 1e3, 4),
                                     "before_ms": round(before[k] * 1e3, 4), "held_out_ms": round(after[k] * 1e3, 4)}
                                    for k in sorted(meas) if k in before and k in after]}
    if args.write_calibration:
        from kd_compile.calibrate.fit import CPU_FITTED
        from kd_compile.calibrate.write import calibrate

        if args.runtime == "onnxruntime":
            if CALIBRATION.exists():
                CALIBRATION.unlink()  # a fresh fit, not a merge into the last one
            res = calibrate("cpu", [args.table], "onnxruntime", "fp32", out=CALIBRATION)
            for rt in RUNTIMES[1:]:  # the other runtimes' scales refitted on the new constants
                if table_path(rt).is_file():
                    calibrate("cpu", [table_path(rt)], rt, "fp32", out=CALIBRATION)
        else:  # merged into the file, its constants kept
            res = calibrate("cpu", [args.table], args.runtime, "fp32", out=CALIBRATION)
        doc["calibration"] = {"written": str(CALIBRATION.relative_to(ROOT)), "device_scales": res["device_scales"],
                              "fitted_constants": {k: res["constants"][k] for k in CPU_FITTED},
                              "error_band": res["error_band"]}
        print(f"wrote {CALIBRATION.relative_to(ROOT)}: scales {res['device_scales']}, "
              + ", ".join(f"{k} {res['constants'][k]:g}" for k in CPU_FITTED))
    # the calibration's error below its sizes, on the models measured there; kept in its bands when written
    # (ONNX Runtime's write rewrote the other runtimes' scales too: their checks are redone with them)
    for rt in (RUNTIMES if args.write_calibration and args.runtime == "onnxruntime" else (args.runtime,)):
        check = small_check(rt, write=args.write_calibration)
        if rt == args.runtime and check is not None:
            doc["small_input_check"] = check
    doc["seconds"] = round(time.perf_counter() - t0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    print(f"{doc['seconds']:.0f} s; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
