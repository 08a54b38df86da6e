"""Out-of-sample check of the shipped latency predictor on published figures no fit has seen.

``benchmarks/data/nvidia_dle_inference.csv`` holds NVIDIA DeepLearningExamples' eager-PyTorch
inference throughputs (ResNet-50 v1.5, SE-ResNeXt101-32x4d and EfficientNet-B0 at batch 256, fp32 and
mixed precision)
on a V100 (a target with no measured table in the calibration), a T4 (calibrated on TensorRT
batch-1 rows only) and an A100 (calibrated on Accel-NASBench's MBConv throughputs, eager AMP at
batch 128). Nothing here is fitted: each row is predicted by ``kd_compile.profile(...,
method="predict")`` exactly as a user would get it, and set beside the measurement and the error
band that prediction carries. For the ResNet-50 mixed-precision rows it also records where the
predicted time goes (the per-layer prediction summed by op kind: ``split_by_op``).

``benchmarks/data/pytorch_gpu_benchmark_b12.csv`` (a second table, in its own section of the
results) holds ryujaehun/pytorch-gpu-benchmark's eager-PyTorch latencies of 15-32 torchvision
models at batch 12 (224 px), fp32 and fp16, on a GTX 1080 Ti, Titan Xp, RTX 2080 Ti, Titan RTX
(devices calibrated on HELP's 32-px tables only) and A100 (calibrated on Accel-NASBench's
mixed-precision rows only), transcribed by ``benchmarks/data/transcribe_pytorch_gpu_benchmark.py``;
each is predicted the same way, and summarised per device and precision.

``benchmarks/data/timm_unfitted.csv`` (a third section) holds timm's own inference benchmarks that no
fit reads but one (``torch.autocast`` fp16, NCHW, batch 256 or 1024; 122 curated models each), transcribed by
``benchmarks/data/transcribe_timm_unfitted.py``: eager PyTorch 2.9.1 on an RTX 5090 (a GPU with no
measured table: predicted from its datasheet) and an RTX 4090 (calibrated on timm's PyTorch 2.4.0
table), and ``torch.compile`` (runtime ``inductor``) on both, plus the RTX 4090's PyTorch 2.4.0
``torch.compile`` table, the validation set on which choices about ``inductor`` are made and its one
constant ``s_compile`` is fitted (``docs/latency-predictor.md``); summarised per role, device and runtime.

``kd_compile/calibrate/data/help-ofa-latency.csv`` (a fourth section) holds HELP's latencies of 500 of its
5,000 Once-for-All MobileNetV3 subnets (128-224 px) on an RTX 2080 Ti, Titan RTX, Titan Xp and V100 at
batch 1, 32 and 64, transcribed by ``benchmarks/data/transcribe_help_ofa.py``. The eager fits read the first
three GPUs' columns of 200 of them (``kd_compile.calibrate.tables.ofa_fit_specs``); the other 300 are
predicted here on all four GPUs (the V100 is in no fit) in eager fp32 (:func:`check_ofa`) and summarised
per device and batch, with Spearman's rho over the subnets.

``benchmarks/data/openppl_t4_trt_b1.csv`` (a fifth section) holds OpenPPL's TensorRT 8 latencies of 35
torchvision models on a Tesla T4 at batch 1 and 224 px, fp16 and int8, transcribed by
``benchmarks/data/transcribe_openppl_t4.py``. The T4's TensorRT fp16 batch-1 calibration was fitted on
super-gradients' 13 models (other families); int8 has no measured table anywhere, and its band is
fp16's, as a proxy. Each row is predicted as a user gets it, summarised per precision and family.

Run::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/external_check.py

Prints one line per row (measured and predicted ms per batch, predicted / measured, the band's
median and 80th-percentile error, whether the error falls inside that 80th percentile), then the
median absolute error and the share within 35%, and writes ``benchmarks/results/external_check.json`` and
the package's summary of the same rows, ``kd_compile/targets/calibration/_out_of_sample.json``, which every
prediction for an ImageNet-size model quotes for its GPU, runtime, precision and batch regime
(:func:`out_of_sample`).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DATA = ROOT / "benchmarks" / "data" / "nvidia_dle_inference.csv"
DATA_B12 = ROOT / "benchmarks" / "data" / "pytorch_gpu_benchmark_b12.csv"
DATA_TIMM = ROOT / "benchmarks" / "data" / "timm_unfitted.csv"
DATA_OFA = ROOT / "kd_compile" / "calibrate" / "data" / "help-ofa-latency.csv"
DATA_PPL = ROOT / "benchmarks" / "data" / "openppl_t4_trt_b1.csv"
OUT = ROOT / "benchmarks" / "results" / "external_check.json"
# the package's summary of these rows, quoted beside a prediction for an ImageNet-size model
PACKAGE_OUT = ROOT / "kd_compile" / "targets" / "calibration" / "_out_of_sample.json"
# section -> (source, the models it measured)
SOURCES = {"dle": ("NVIDIA DeepLearningExamples", "ImageNet CNNs"),
           "b12": ("ryujaehun/pytorch-gpu-benchmark", "torchvision models"),
           "timm": ("timm's benchmark tables", "timm models"), "ofa": ("HELP", "OFA MobileNetV3 subnets"),
           "ppl": ("OpenPPL's T4 benchmark", "torchvision models")}


def read_rows(path: Path = DATA) -> list[dict[str, str]]:
    """The CSV's rows (``#`` lines are its provenance)."""
    with open(path, newline="") as f:
        return list(csv.DictReader(line for line in f if not line.startswith("#")))


def _predicted(r: dict[str, str], batch: int, measured_ms: float) -> dict[str, object]:
    """One row (``device``, ``model``, ``spec``, ``precision``; ``runtime``, default eager ``torch``)
    predicted by ``kd_compile.profile(..., method="predict")`` exactly as a user gets it, beside its
    measurement and the band it carries. A spec ``timm:<name>@<px>`` is profiled at that image size."""
    import kd_compile

    spec, _, px = r["spec"].partition("@")
    runtime = r.get("runtime") or "torch"
    p = kd_compile.profile(spec, target=r["device"], runtime=runtime, precision=r["precision"], batch=batch,
                           image_size=int(px) if px else None, method="predict")
    return _record(r, p, runtime, batch, measured_ms)


def _record(r: dict[str, str], p: dict[str, Any], runtime: str, batch: int, measured_ms: float) -> dict[str, object]:
    """One checked row from a prediction ``p`` (``latency_ms``, ``params``, ``extra``) of row ``r``."""
    from kd_compile.profilers.error_bands import small_input_band

    band = p["extra"]["error_band"]
    ratio = p["latency_ms"] / measured_ms
    p80 = band.get("p80_ape")
    return {
        "device": r["device"], "model": r["model"], "spec": r["spec"], "runtime": runtime, "precision": r["precision"],
        "batch": batch, "params": p["params"], "measured_ms": round(measured_ms, 3),
        "predicted_ms": round(p["latency_ms"], 3),
        "ratio": round(ratio, 3), "band_median": band.get("median_ape"), "band_p80": p80,
        "band_basis": band.get("basis"), "band_32px_only": small_input_band(band),
        "transfer": band.get("transfer"), "calibration": p["extra"].get("calibration"),
        "inside_p80": p80 is not None and bool(abs(ratio - 1) <= p80),  # no band (unvalidated): not inside one
    }  # fmt: skip


def check(rows: list[dict[str, str]]) -> list[dict[str, object]]:
    """Each row (throughput at ``batch``) predicted with the shipped calibration, beside its measurement."""
    return [_predicted(r, int(r["batch"]), 1000.0 * int(r["batch"]) / float(r["images_per_s"])) for r in rows]


def check_ms(rows: list[dict[str, str]]) -> list[dict[str, object]]:
    """Each row of a table in ms per batch (the batch-12 table, OpenPPL's) predicted as a user gets it,
    beside its measurement."""
    return [_predicted(r, int(r["batch"]), float(r["ms_per_batch"])) for r in rows]


def check_timm(rows: list[dict[str, str]]) -> list[dict[str, object]]:
    """Each row of timm's unfitted tables (ms per batch) predicted as a user gets it, with its role.

    ``same_model`` is False where the table's parameter count differs by more than 2% from that of
    the model profiled here, which ``profile`` folds as it deploys (RepVGG, MobileOne, RepViT): the
    PyTorch 2.9.1 tables ran those folded too, the PyTorch 2.4.0 one unfolded. Such a row measured
    another graph, and the summaries leave it out.
    """
    out = []
    for r in rows:
        res = _predicted(r, int(r["batch"]), float(r["ms_per_batch"]))
        table_params = float(r["param_count_m"]) * 1e6
        out.append({"role": r["role"], **res, "table_params": table_params,
                    "same_model": abs(float(res["params"]) - table_params) <= 0.02 * table_params})
    return out


def ofa_test_rows(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """The subnets of HELP's OFA table that no fit reads (not among ``tables.ofa_fit_specs``)."""
    from kd_compile.calibrate.tables import ofa_fit_specs

    fitted = set(ofa_fit_specs(DATA_OFA))
    return [r for r in rows if r["spec"] not in fitted]


def check_ofa(rows: list[dict[str, str]]) -> list[dict[str, object]]:
    """Each subnet of HELP's Once-for-All table predicted for every GPU and batch the table measured,
    in eager PyTorch fp32, beside its measurement. Each subnet is built, put in its deploy form and
    traced once, then predicted for each column by the steps ``kd_compile.profile(spec,
    method="predict")`` takes (``RooflineProfiler.predict_ops`` with the input size): the same
    figure, without tracing it twelve times (``tests/testing/test_external_check.py`` checks one)."""
    from kd_compile.profilers.counting import trace_ops
    from kd_compile.profilers.roofline import RooflineProfiler
    from kd_compile.students.common import deployed_if_equivalent
    from kd_compile.teacher import load_teacher

    cols = [c for c in rows[0] if c.endswith("_ms")] if rows else []
    profilers: dict[str, RooflineProfiler] = {}
    out = []
    for r in rows:
        tch = load_teacher(r["spec"])
        module, _ = deployed_if_equivalent(tch.module, tuple(tch.input_shape))
        tr = trace_ops(module, tuple(tch.input_shape))
        for c in cols:
            device, batch = c.removesuffix("_ms").rsplit("_b", 1)
            prof = profilers.setdefault(device, RooflineProfiler(device, runtime="torch", precision="fp32"))
            m = prof.predict_ops(tr.ops, int(batch), input_px=max(tch.input_shape[1:]))
            p = {"latency_ms": m.latency_ms, "params": tr.params, "extra": m.extra}
            row = {"device": device, "model": r["arch_index"], "spec": r["spec"], "precision": "fp32"}
            out.append(_record(row, p, "torch", int(batch), float(r[c])))
    return out


# what the OFA section's rows share per (device, batch) column, kept once per column in the results
_OFA_SHARED = ("device", "runtime", "precision", "batch", "band_median", "band_p80", "band_basis", "band_32px_only",
               "transfer", "calibration")
_OFA_PER_ROW = ("measured_ms", "predicted_ms", "ratio", "inside_p80")


def ofa_columns(rows: list[dict[str, object]]) -> dict[str, object]:
    """The OFA section's rows (``check_ofa``: every subnet for each column in turn) by column: the
    subnets (``models``, ``specs``, ``params``) once, and per ``device/batch`` column what its rows
    share and each row's figures, in the subnets' order (6,000 rows stored as 12 columns)."""
    cols: dict[str, dict[str, object]] = {}
    models: dict[str, tuple[str, object]] = {}
    for r in rows:
        c = cols.setdefault(f"{r['device']}/{r['batch']}", {**{k: r[k] for k in _OFA_SHARED},
                                                            **{k: [] for k in _OFA_PER_ROW}})
        for k in _OFA_PER_ROW:
            c[k].append(r[k])  # type: ignore[union-attr]
        models.setdefault(str(r["model"]), (str(r["spec"]), r["params"]))
    return {"models": list(models), "specs": [v[0] for v in models.values()],
            "params": [v[1] for v in models.values()], "columns": cols}


def ofa_rows(section: dict[str, object]) -> list[dict[str, object]]:
    """The rows ``ofa_columns`` stored, back (``check_ofa``'s rows, in its order)."""
    out = []
    models, specs, params = section["models"], section["specs"], section["params"]
    for i, (model, spec, n) in enumerate(zip(models, specs, params, strict=True)):  # type: ignore[call-overload]
        for c in section["columns"].values():  # type: ignore[union-attr]
            out.append({**{k: c[k] for k in _OFA_SHARED}, "model": model, "spec": spec, "params": n,
                        **{k: c[k][i] for k in _OFA_PER_ROW}})
    return out


def split_by_op(r: dict[str, str]) -> dict[str, object]:
    """Where one row's predicted time goes: its per-layer prediction summed by op kind (conv, matmul,
    elementwise, ...), as ``kd-compile profile ... --layers`` prints it."""
    import kd_compile

    b = int(r["batch"])
    p = kd_compile.profile(r["spec"], target=r["device"], runtime="torch", precision=r["precision"], batch=b,
                           method="predict", layers=True)
    by_op: dict[str, float] = {}
    for layer in p["layers"]:
        by_op[layer["op"]] = by_op.get(layer["op"], 0.0) + float(layer["latency_ms"])
    return {"device": r["device"], "model": r["model"], "precision": r["precision"], "batch": b,
            "measured_ms": round(1000.0 * b / float(r["images_per_s"]), 3), "predicted_ms": round(p["latency_ms"], 3),
            "by_op_ms": {k: round(v, 3) for k, v in sorted(by_op.items())}}


def by_group(
    res: list[dict[str, object]], keys: tuple[str, ...] = ("device", "precision")
) -> dict[str, dict[str, object]]:
    """``summary`` per ``device/precision`` (or the given ``keys``), with the median predicted / measured ratio."""
    return {k: {**summary(v), "median_ratio": round(float(np.median([float(x["ratio"]) for x in v])), 3),
                "spearman": _spearman(v)} for k, v in group_rows(res, keys).items()}


def group_rows(res: list[dict[str, object]], keys: tuple[str, ...]) -> dict[str, list[dict[str, object]]]:
    """The rows by ``key1/key2/...`` of their values, in the order each key first appears."""
    groups: dict[str, list[dict[str, object]]] = {}
    for r in res:
        groups.setdefault("/".join(str(r[k]) for k in keys), []).append(r)
    return groups


def _spearman(rows: list[dict[str, object]]) -> float | None:
    """Spearman's rho of predicted against measured over ``rows`` (None for fewer than 3)."""
    if len(rows) < 3:
        return None
    from scipy.stats import spearmanr

    rho = spearmanr([float(r["predicted_ms"]) for r in rows], [float(r["measured_ms"]) for r in rows])[0]
    return round(float(rho), 4)


def summary(res: list[dict[str, object]]) -> dict[str, object]:
    ape = np.array([abs(float(r["ratio"]) - 1) for r in res])
    return {"n": len(res), "median_ape": round(float(np.median(ape)), 4),
            "within_35": round(float(np.mean(ape <= 0.35)), 4),
            "inside_p80_band": round(float(np.mean([r["inside_p80"] for r in res])), 4)}  # fmt: skip


def out_of_sample(sections: dict[str, list[dict[str, object]]]) -> dict[str, object]:
    """What the package quotes beside a prediction for an ImageNet-size model (``PACKAGE_OUT``, read by
    ``kd_compile.profilers.error_bands.out_of_sample``), from the checked rows by ``SOURCES`` key.

    ``entries``, per ``target/runtime/precision/batch-regime`` (the key of an error band, with the
    target ahead), one summary per source: the median and 80th-percentile absolute error, the
    median predicted / measured ratio, the batches, the input sides' [min, max] and the models'
    families (``calibrate.tables.family_of``). ``small_input_bands``, per
    ``runtime/precision/batch-regime`` and source: the median ratio per GPU and the median error over
    the rows whose band was measured on 32-px networks only (HELP's), quoted for a GPU without rows
    of its own. timm's rows count only where they are a test (not the validation table
    ``s_compile`` is fitted on), measured the model profiled here, and the device was left out of
    every fit (the RTX 4090's calibration was fitted on timm's table of the same models).
    """
    from kd_compile.calibrate.tables import family_of
    from kd_compile.profilers.error_bands import batch_regime

    rows = []
    for key, res in sections.items():
        for r in res:
            left_out = str(r["transfer"]).startswith("device left out")
            if key == "timm" and (r["role"] != "test" or not r["same_model"] or not left_out):
                continue
            px = str(r["spec"]).partition("@")[2]
            rows.append({**r, "section": key, "regime": batch_regime(int(r["batch"])),
                         "input_px": int(px) if px else _input_px(str(r["spec"]))})

    def stats(group: list[dict[str, object]]) -> dict[str, object]:
        ape = np.array([abs(float(r["ratio"]) - 1) for r in group])
        source, models = SOURCES[str(group[0]["section"])]
        return {"source": source, "models": models, "n": len(group), "median_ape": round(float(np.median(ape)), 4),
                "p80_ape": round(float(np.quantile(ape, 0.8)), 4),
                "median_ratio": round(float(np.median([float(r["ratio"]) for r in group])), 3),
                "batches": sorted({int(r["batch"]) for r in group}),
                "input_px": [min(int(r["input_px"]) for r in group), max(int(r["input_px"]) for r in group)],
                "families": sorted({family_of(str(r["spec"])) for r in group})}

    def grouped(group: list[dict[str, object]], keys: tuple[str, ...]) -> dict[str, list[dict[str, object]]]:
        return dict(sorted(group_rows(group, keys).items()))

    where = ("runtime", "precision", "regime")
    entries = {k: [stats(v) for v in grouped(g, ("section",)).values()]
               for k, g in grouped(rows, ("device", *where)).items()}
    pooled = {}
    for k, g in grouped([r for r in rows if r["band_32px_only"]], where).items():
        pooled[k] = []
        for v in grouped(g, ("section",)).values():
            st = stats(v)
            pooled[k].append({"source": st["source"], "models": st["models"], "n": st["n"],
                              "median_ape": st["median_ape"],
                              "median_ratio_by_device": {d: stats(x)["median_ratio"]
                                                         for d, x in grouped(v, ("device",)).items()}})
    return {"written_by": "benchmarks/external_check.py",
            "about": "predicted / measured on published tables of ImageNet-size models that no fit reads",
            "entries": entries, "small_input_bands": pooled}


def package_summary(doc: dict[str, Any]) -> dict[str, object]:
    """``out_of_sample`` of every section of a results document (what ``main`` writes to ``--out``)."""
    return out_of_sample({"dle": doc["rows"], "b12": doc["batch12"]["rows"], "timm": doc["timm_unfitted"]["rows"],
                          "ofa": ofa_rows(doc["help_ofa"]), "ppl": doc["openppl_t4"]["rows"]})


def _input_px(spec: str) -> int:
    """The input side of a spec checked at its own size: an ``ofa:<resolution>/...`` subnet's
    resolution, else 224 (the torchvision and DeepLearningExamples tables)."""
    return int(spec.removeprefix("ofa:").split("/")[0]) if spec.startswith("ofa:") else 224


def _group_line(key: str, g: dict[str, object], width: int) -> str:
    """One printed line of a ``by_group`` summary."""
    return (f"  {key:{width}} {g['n']:3} models: median x{g['median_ratio']:.2f}, "
            f"median error {100 * float(g['median_ape']):.1f}%, within 35% {100 * float(g['within_35']):.0f}%, "
            f"inside the printed p80 band {100 * float(g['inside_p80_band']):.0f}%")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--package-out", default=str(PACKAGE_OUT),
                    help="where to write the package's out-of-sample summary (default: the shipped one)")
    ap.add_argument("--summary-only", action="store_true",
                    help="predict nothing: write the package's summary from the results file (--out) as it is")
    args = ap.parse_args(argv)
    if args.summary_only:
        Path(args.package_out).write_text(json.dumps(package_summary(json.loads(Path(args.out).read_text())),
                                                     indent=1) + "\n")
        return 0
    import torch

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    res = check(read_rows())
    for r in res:
        where = "inside" if r["inside_p80"] else "OUTSIDE"
        print(f"{r['device']:5} {r['model']:19} {r['precision']} batch {r['batch']}: "
              f"measured {r['measured_ms']:8.2f} ms, predicted {r['predicted_ms']:8.2f} ms, x{r['ratio']:.2f}  "
              f"(band ±{100 * r['band_median']:.0f}%, p80 {100 * r['band_p80']:.0f}%: {where}; {r['transfer']})")
    s = summary(res)
    print(f"\n{s['n']} rows: median error {100 * s['median_ape']:.1f}%, within 35% {100 * s['within_35']:.0f}%, "
          f"inside the printed p80 band {100 * s['inside_p80_band']:.0f}%  ({time.perf_counter() - t0:.0f} s)")
    split = [split_by_op(r) for r in read_rows() if r["model"] == "resnet50v1.5" and r["precision"] == "fp16"]
    for r in split:
        parts = " + ".join(f"{k} {v:.1f}" for k, v in r["by_op_ms"].items())
        print(f"  {r['device']} {r['model']} {r['precision']} batch {r['batch']}: predicted {r['predicted_ms']:.1f} ms "
              f"= {parts} (measured {r['measured_ms']:.1f} ms)")
    res12 = check_ms(read_rows(DATA_B12))
    groups = by_group(res12)
    print(f"\n{DATA_B12.name}: eager PyTorch, batch 12, predicted / measured per device and precision")
    for k, g in groups.items():
        print(_group_line(k, g, 15))
    s12 = summary(res12)
    print(f"  all {s12['n']} rows: median error {100 * s12['median_ape']:.1f}%, "
          f"within 35% {100 * s12['within_35']:.0f}%, inside the printed p80 band {100 * s12['inside_p80_band']:.0f}%"
          f"  ({time.perf_counter() - t0:.0f} s)")
    res_t = check_timm(read_rows(DATA_TIMM))
    groups_t = by_group([r for r in res_t if r["same_model"]], ("role", "device", "runtime"))
    other: dict[str, list[str]] = {}
    for r in res_t:
        if not r["same_model"]:
            other.setdefault(f"{r['role']}/{r['device']}/{r['runtime']}", []).append(str(r["model"]))
    print(f"\n{DATA_TIMM.name}: timm's tables (only s_compile is fitted, on the validation one), autocast fp16, "
          "predicted / measured per role, device "
          "and runtime (inductor = torch.compile)")
    for k, g in groups_t.items():
        print(_group_line(k, g, 32))
    for k, models in other.items():
        print(f"  left out of {k}: {', '.join(models)} (the table's parameter count is not that of the model "
              "profiled here, which is folded as it deploys: the table measured the other form)")
    # median ratio per architecture family of each test group: where a GPU's error comes from
    from kd_compile.calibrate.tables import family_of

    fam_rows = [{**r, "family": family_of(str(r["spec"]))} for r in res_t if r["same_model"] and r["role"] == "test"]
    families = by_group(fam_rows, ("device", "runtime", "family"))
    print("  test tables, median predicted / measured per family:")
    for dev_rt in dict.fromkeys("/".join(k.split("/")[:2]) for k in families):
        print(f"    {dev_rt:26} " + ", ".join(f"{k.split('/')[2]} x{g['median_ratio']:.2f} ({g['n']})"
                                            for k, g in families.items() if k.startswith(dev_rt + "/")))
    print(f"  ({time.perf_counter() - t0:.0f} s)")
    res_p = check_ms(read_rows(DATA_PPL))
    groups_p = by_group(res_p, ("device", "runtime", "precision"))
    print(f"\n{DATA_PPL.name}: OpenPPL's TensorRT 8 latencies of torchvision models, batch 1, 224 px, predicted / "
          "measured per device, runtime and precision, with Spearman's rho over the models")
    for k, g in groups_p.items():
        print(_group_line(k, g, 18) + f", rho {g['spearman']:.3f}")
    fam_p = by_group([{**r, "family": family_of(str(r["spec"]))} for r in res_p], ("precision", "family"))
    for prec in dict.fromkeys(k.split("/")[0] for k in fam_p):
        print(f"    {prec}: " + ", ".join(f"{k.split('/')[1]} x{g['median_ratio']:.2f} ({g['n']})"
                                     for k, g in fam_p.items() if k.startswith(prec + "/")))
    print(f"  ({time.perf_counter() - t0:.0f} s)")
    res_o = check_ofa(ofa_test_rows(read_rows(DATA_OFA)))
    groups_o = by_group(res_o, ("device", "batch"))
    print(f"\n{DATA_OFA.name}: HELP's Once-for-All MobileNetV3 subnets no fit reads, eager PyTorch fp32, predicted "
          "/ measured per device and batch, with Spearman's rho over the subnets")
    for k, g in groups_o.items():
        print(_group_line(k, g, 15) + f", rho {g['spearman']:.3f}")
    print(f"  ({time.perf_counter() - t0:.0f} s)")
    doc = {"source": str(DATA.relative_to(ROOT)), "rows": res, "summary": s, "split_by_op": split,
           "batch12": {"source": str(DATA_B12.relative_to(ROOT)), "rows": res12, "summary": s12, "by_group": groups},
           "timm_unfitted": {"source": str(DATA_TIMM.relative_to(ROOT)), "rows": res_t, "by_group": groups_t,
                             "by_family": families, "not_same_model": other},
           "help_ofa": {"source": str(DATA_OFA.relative_to(ROOT)), "by_group": groups_o, **ofa_columns(res_o)},
           "openppl_t4": {"source": str(DATA_PPL.relative_to(ROOT)), "rows": res_p, "by_group": groups_p,
                          "by_family": fam_p}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    Path(args.package_out).write_text(json.dumps(package_summary(doc), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
