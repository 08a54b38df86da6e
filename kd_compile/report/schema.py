"""Report schema (versioned) and the builder that fills it from one compile run.

The schema is published as a JSON Schema (draft 2020-12), ``report.schema.json`` beside this
file and shipped in the package (``json_schema()`` reads it), so a CI pipeline can validate a
``report.json`` with any JSON Schema validator.
"""

from __future__ import annotations

import json
import math
import platform
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import torch

from ..data.stream import is_streamed
from ..search.score import ACCURACY_WEIGHT
from ..search.trial import Trial, TrialStatus, pareto_trials

SCHEMA_VERSION = "1.3"
REQUIRED = (
    "schema_version", "kd_compile_version", "run", "target", "teacher", "student", "speedup", "objective", "search",
    "measurements", "exports", "warnings", "artifacts",
)  # fmt: skip
SCHEMA_FILE = Path(__file__).with_name("report.schema.json")
MAX_LAYERS = 300  # per-layer rows kept in report.json (a student has far fewer)


@cache
def json_schema() -> dict[str, Any]:
    """The published JSON Schema of ``report.json`` (draft 2020-12)."""
    return json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))


def wilson_interval(p: float | None, n: int, z: float = 1.96) -> list[float] | None:
    """Wilson score interval (95% by default) of an accuracy ``p`` measured on ``n`` images:
    the error band of an accuracy, honest near 0 and 1 and for small ``n``."""
    if p is None or n <= 0:
        return None
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return [max(0.0, centre - half), min(1.0, centre + half)]


def layer_rows(counts: Any, latency: Any) -> dict[str, Any]:
    """The student's per-layer costs: the latency measurement's layers when they carry a latency
    (the roofline predictor's kernels, a profiler's layers), else the counted FLOPs/params."""
    timed = [layer for layer in latency.layers if layer.latency_ms is not None]
    layers, source = (timed, latency.method) if timed else (list(counts.layers), "counted")
    rows = [
        {
            "name": layer.name,
            "op": layer.op,
            "flops": int(layer.flops),
            "params": int(layer.params),
            "latency_ms": layer.latency_ms,
        }
        for layer in layers[:MAX_LAYERS]
    ]
    return {"source": source, "device": latency.device if timed else None, "rows": rows}


def pareto_front(trials: list[Trial], objectives: Sequence[tuple[str, bool]]) -> list[dict[str, Any]]:
    """Non-dominated ok trials at top fidelity over ``objectives`` ((metric, maximise) pairs:
    the compiler's are accuracy up, latency and params down), most accurate first."""
    front = [
        {
            "number": t.number,
            "accuracy": t.metrics["accuracy"],
            "latency_ms": t.metrics["latency_ms"],
            "params": t.metrics["params"],
            "arch": t.metrics.get("arch"),
            "score": t.score,
        }
        for t in pareto_trials(trials, objectives)
    ]
    return sorted(front, key=lambda d: -d["accuracy"])


def speedups(t_lat: Any, s_lat: Any, local: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Teacher latency / student latency (> 1: the student is faster) on the target, with how it
    was obtained and the predictor's error band, and on this machine where it was measured."""
    out: dict[str, Any] = {
        "target": t_lat.latency_ms / s_lat.latency_ms if s_lat.latency_ms else None,
        "method": s_lat.method,
        "runtime": s_lat.runtime,
        "precision": s_lat.precision,
        "error_band": s_lat.extra.get("error_band"),
    }
    for where in ("cpu", "gpu"):
        st, te = local.get(f"student_{where}"), local.get(f"teacher_{where}")
        if st and te and st.get("latency_ms"):
            out[f"local_{where}"] = {
                "speedup": te["latency_ms"] / st["latency_ms"],
                "device": st.get("device"),
                "runtime": st.get("runtime"),
            }
    return out


def _m(meas: Any) -> dict[str, Any]:
    return meas.to_dict(layers=False)


# what an int8 latency assumes and kd-compile does not ship: the quantized network (TensorRT 11 builds int8
# only from an ONNX with Q/DQ nodes, which calibration on the user's own images writes)
INT8_NOTE = ("latencies are costed in int8, but student.onnx is fp32 and no int8 engine is written: quantize it "
             "with calibration images of your own data (e.g. NVIDIA ModelOpt's ONNX post-training quantization) "
             "and check its accuracy before relying on the int8 speed-up")


#: how :func:`near_chance_note` begins (the report leads with it; the run prints it)
NEAR_CHANCE = "the shipped student scores"


def near_chance_note(acc: float | None, num_classes: int, split: str, batch_size: int, n_train: int) -> str | None:
    """What to say of a shipped student that scores near chance (``inputs.near_chance``, the teacher's
    check's threshold): it ships, as no gate was set, but the run says why it is
    likely so weak. None: it is not."""
    from ..inputs import near_chance

    if acc is None or not near_chance(acc, num_classes):
        return None
    chance = 1.0 / max(1, num_classes)
    steps = -(-n_train // batch_size) if n_train else None  # optimiser steps per epoch
    few = f"; --batch-size {batch_size} leaves {steps} step{'s' if steps != 1 else ''} an epoch" \
        if steps is not None and steps < 10 else ""
    return (f"{NEAR_CHANCE} {acc:.1%} on the {split} split, near chance ({chance:.1%}): give it "
            f"more training (--final-epochs, --budget) or a smaller --batch-size{few}; --min-accuracy or "
            "--max-accuracy-drop make such a run fail (exit 13)")


def build_report(**k: Any) -> dict[str, Any]:
    """Assemble the report dict from the pieces ``api.compile`` computed (keyword arguments)."""
    from .. import __version__

    cfg, target, tch, sr, chosen = k["cfg"], k["target"], k["teacher"], k["search"], k["chosen"]
    t_counts, t_lat, s_counts, s_lat = k["t_counts"], k["t_lat"], k["s_counts"], k["s_lat"]
    runtime, precision = cfg.costed_in(target)
    trials = sr.trials
    statuses = {str(s): sum(1 for t in trials if t.status is s) for s in TrialStatus}
    trace = []
    best_so_far = None
    for t in trials:
        if t.ok and (best_so_far is None or t.score < best_so_far):
            best_so_far = t.score
        trace.append(
            {
                "number": t.number,
                "status": str(t.status),
                "score": t.score,
                "best_score": best_so_far,
                "fidelity": t.fidelity,
            }
        )
    extra = dict(k["extra_measurements"])
    exports = extra.pop("exports", None) or {}  # ship.export's parity checks travel with the measurements
    from ..data.stream import split_size

    n_val = split_size(k["data"], "val")
    # headline accuracies are on the held-out test split (read once, at the end); validation
    # accuracy, on which every choice was made, is kept beside them. No test split (data-free):
    # validation only, and the report says so.
    on_test = k.get("test_acc") is not None
    n_test = split_size(k["data"], "test") if getattr(k["data"], "has_test", False) else 0
    split, n_acc = ("test", n_test) if on_test else ("val", n_val)
    t_acc = k["test_acc_teacher"] if on_test else k["acc_teacher"]
    s_acc_kd, s_acc_ce = (k["test_acc"], k.get("test_acc_ce")) if on_test else (k["s_acc"], k["s_acc_ce"])
    # the KD student ships unless its CE-only twin scored higher on validation (final.FinalResult)
    shipped = k.get("shipped", "kd")
    s_acc = s_acc_ce if shipped == "ce" else s_acc_kd
    s_val = k["s_acc_ce"] if shipped == "ce" else k["s_acc"]
    meta = getattr(k["data"], "meta", None) or {}
    skipped = int(meta.get("skipped_images") or 0)  # unreadable files of an ImageFolder, left out and named
    timings = k["timings"]
    outside = timings["total"] - timings.get("training", 0.0) - timings.get("final_training", 0.0)
    report = {
        "schema_version": SCHEMA_VERSION,
        "kd_compile_version": __version__,
        "run": {
            "config": cfg.to_dict(),
            "machine": {
                "platform": platform.platform(),
                "processor": platform.processor() or platform.machine(),
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "cuda": torch.cuda.is_available(),
            },
            "timings_s": timings,
            "share_outside_training": outside / timings["total"] if timings["total"] else None,
            "data_free": bool(k.get("data_free")),
            "data": {
                "name": k["data"].name,
                "train": split_size(k["data"], "train"),
                "mode": "stream" if is_streamed(k["data"]) else "memory",
                "teacher_knowledge": getattr(k["data"], "knowledge", None) or None,
                "val": n_val,
                "test": n_test,
                "accuracy_split": split,
                "num_classes": k["data"].num_classes,
                "input_shape": list(k["data"].input_shape),
                "skipped_images": skipped,
            },
        },
        "target": {
            "name": target.name,
            "display_name": target.display_name,
            "kind": target.kind,
            "runtime": runtime,
            "precision": precision,
            "local": target.local,
        },
        "teacher": {
            "path": str(cfg.teacher),
            "format": tch.meta.get("format"),
            "params": t_counts.params,
            "flops": t_counts.flops,
            "accuracy": t_acc,
            "accuracy_split": split,
            "accuracy_ci95": wilson_interval(t_acc, n_acc),
            "val_accuracy": k["acc_teacher"],
            "latency": _m(t_lat),
            "input_shape": list(tch.input_shape),
            "num_classes": tch.num_classes,
            "preprocessing": tch.meta.get("preprocessing"),
            "notes": list(tch.meta.get("notes") or []),
        },
        "student": {
            "arch": k["student_arch"],
            "config": k["student_config"],
            "params": s_counts.params,
            "flops": s_counts.flops,
            "peak_activation_bytes": s_counts.peak_activation_bytes,
            "trained_with": shipped,
            "accuracy": s_acc,
            "accuracy_split": split,
            "accuracy_ci95": wilson_interval(s_acc, n_acc),
            "accuracy_with_kd": s_acc_kd,
            "accuracy_without_kd": s_acc_ce,
            "kd_gain": None if s_acc_ce is None else s_acc_kd - s_acc_ce,
            "val_accuracy": s_val,
            "val_accuracy_with_kd": k["s_acc"],
            "val_accuracy_without_kd": k["s_acc_ce"],
            "params_ratio": s_counts.params / t_counts.params,
            "flops_ratio": s_counts.flops / t_counts.flops,
            "latency": _m(s_lat),
            "latency_ratio": s_lat.latency_ms / t_lat.latency_ms,
            "trade_score": k["trade"],
            "s": k["s_term"],
            "layers": layer_rows(s_counts, s_lat),
        },
        "speedup": speedups(t_lat, s_lat, extra),
        "objective": {
            "name": "trade",
            "acc_target": k["acc_target"],
            "eps": 0.01,
            "search_score": f"s / (acc_s / acc_target) ** {ACCURACY_WEIGHT}",
            "exact_score": "acc_target / (acc_s * (1[acc_target <= acc_s] + eps)) * s",
        },
        "search": {
            "strategy": cfg.strategy,
            "space": cfg.space,
            "budget": cfg.budget.to_dict(),
            "evaluated": len(trials),
            "statuses": statuses,
            "resumed": sr.resumed,
            "duplicates": sr.duplicates,
            "screened": sr.screened,
            "stopped_by_time": sr.stopped_by_time,
            # the trial that trained the chosen student during the search (None: a model's pick
            # that the search never trained, e.g. lf-gpr's GP argmax) and how it was chosen
            "best_number": None if chosen.trial is None else chosen.trial.number,
            "chosen": {
                "by": chosen.by,
                "number": None if chosen.trial is None else chosen.trial.number,
                "trained_at_fidelity": chosen.trained_at,
            },
            "notes": list(sr.notes),
            "trace": trace,
            "candidates": [t.to_dict() for t in trials],
            "pareto": k["pareto"],
        },
        "measurements": extra,
        "exports": exports,
        "warnings": [f"{n} was not written: {c.get('error')}" for n, c in exports.items() if c.get("status") != "ok"]
        + ([f"{skipped} unreadable image(s) left out of the data: {', '.join(meta.get('skipped_examples') or [])}"]
           if skipped else [])
        + ([INT8_NOTE] if precision == "int8" else [])
        + [w for w in [near_chance_note(s_acc, k["data"].num_classes, split, cfg.batch_size,
                                        split_size(k["data"], "train"))] if w],
        "distiller": k.get("distiller") or {"name": "kd", "describe": "Hinton KD on logits (searched tau/alpha)"},
        "final_training": k.get("final_training"),
        "artifacts": {name: str(Path(p)) for name, p in k["artifacts"].items()},
    }
    for t in report["search"]["candidates"]:
        t["metrics"].pop("traceback", None)
    return report


def validate_report(report: dict[str, Any]) -> None:
    """Raise ValueError when a report lacks a required section or has another schema version."""
    missing = [key for key in REQUIRED if key not in report]
    if missing:
        raise ValueError(f"report lacks {', '.join(missing)}")
    if report["schema_version"].split(".")[0] != SCHEMA_VERSION.split(".")[0]:
        raise ValueError(f"report schema {report['schema_version']} is not {SCHEMA_VERSION}")
