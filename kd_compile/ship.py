"""The chosen student, shipped: checked (finite weights), exported (student.pt, a checked
student.onnx, an engine where TensorRT is), measured on the target and on this machine, and held
to the quality gates a CI pipeline asked for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from . import __version__
from .config import CompileConfig
from .errors import KdCompileError
from .evaluate import RunContext, costs, latency_on_target
from .profilers import InputSpec
from .targets import get_target

__all__ = ["check_finite", "enforce_gates", "export", "gates"]


def gates(cfg: CompileConfig, report: dict[str, Any]) -> dict[str, Any]:
    """The quality gates asked for, each with its threshold, the value found and whether it passed."""
    s, t = report["student"], report["teacher"]
    drop = 100 * (t["accuracy"] - s["accuracy"])
    speedup = (report.get("speedup") or {}).get("target")
    gates: dict[str, Any] = {}
    split = s.get("accuracy_split", "val")  # the report's headline accuracies: test where the data has it
    if cfg.min_accuracy is not None:
        gates["min_accuracy"] = {
            "threshold": cfg.min_accuracy,
            "value": s["accuracy"],
            "passed": s["accuracy"] >= cfg.min_accuracy,
            "split": split,
        }
    if cfg.max_accuracy_drop is not None:
        gates["max_accuracy_drop"] = {
            "threshold": cfg.max_accuracy_drop,
            "value": drop,
            "passed": drop <= cfg.max_accuracy_drop,
            "split": split,
        }
    if cfg.min_speedup is not None:
        ok = speedup is not None and speedup >= cfg.min_speedup
        gates["min_speedup"] = {"threshold": cfg.min_speedup, "value": speedup, "passed": ok}
    return gates


def enforce_gates(gates: dict[str, Any]) -> None:
    from .errors import QualityGateError

    failed = [f"{k} (needed {g['threshold']:g}, got {g['value']:.4g})" for k, g in gates.items() if not g["passed"]]
    if failed:
        raise QualityGateError(
            f"quality gate failed: {'; '.join(failed)}", hint="the student and the report were written to --out"
        )


def check_finite(model: nn.Module) -> None:
    """A student with a NaN or infinite weight or BatchNorm statistic is never shipped."""
    from .errors import TrainingError

    bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise TrainingError(
            f"the final student has non-finite values in {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}",
            hint="lower --lr, or shorten --final-epochs",
        )


def export(
    cfg: CompileConfig, student: nn.Module, family: Any, config: dict[str, Any], accuracy: float,
    inputs: Any, run: RunContext, rep: Any, folder: Path, *, teacher: nn.Module,
) -> tuple[dict[str, Path], Any, Any, dict[str, Any]]:  # fmt: skip
    """Write student.pt/.onnx/.torchscript.pt/.pt2; get the student's latency on the target and,
    when the target is not this machine, measure student and ``teacher`` (the teacher as the
    reference was costed: folded where ``deployed_if_equivalent`` folds it) here too (an honest
    local number: this CPU, and the local GPU when there is one) beside the predictor's figure for
    the same device. ``extra["exports"]`` holds each export's parity check (or why it was left out)."""
    from .export import export_student
    from .latency import plan_latency

    target = run.target
    precision = cfg.costed_in(target)[1]
    data = inputs.data
    spec = InputSpec(tuple(inputs.teacher.input_shape))
    check_finite(student)
    checks: dict[str, Any] = {}  # per exported file: its parity check, or why it was left out
    artifacts = export_student(
        student,
        family,
        config,
        spec,
        folder,
        checks=checks,
        # the engine in the precision the student was costed in; int8 needs calibration data: fp16
        engine_precision="fp16" if precision == "int8" else precision,
        meta={
            "teacher": str(cfg.teacher),
            "data": inputs.source.hint(),
            "normalize": {"mean": list(data.mean), "std": list(data.std)},
            "preprocessing": inputs.teacher.meta.get("preprocessing"),
            "accuracy": accuracy,
            "class_names": list(data.class_names),
            "target": target.name,
            "kd_compile_version": __version__,
        },
    )
    for name, c in checks.items():
        if c.get("status") == "failed":
            rep.message(f"warning: {name} was not written: {c.get('error')}")
    from .students.common import deployed

    student = deployed(student)  # costs and local timings of what ships (RepVGG folded, as in student.onnx)
    s_counts, s_lat = costs(student, spec, target, plan=run.latency)
    extra: dict[str, Any] = {}
    if run.latency.method == "predict":
        local = [("cpu", get_target("cpu"))]
        if torch.cuda.is_available():
            from .latency import local_target

            local.append(("gpu", local_target()))
        for where, tgt in local:
            try:
                lp = plan_latency(tgt, "measure")
                extra[f"student_{where}"] = latency_on_target(student, spec, tgt, plan=lp).to_dict(layers=False)
                extra[f"teacher_{where}"] = latency_on_target(teacher, spec, tgt, plan=lp).to_dict(layers=False)
            except KdCompileError as exc:
                rep.message(f"local {where} measurement skipped: {exc.line()}")
                continue
            try:  # the predictor on the device just measured: predicted against measured, in the report
                pp = plan_latency(tgt, "predict")
                for who, m in (("student", student), ("teacher", teacher)):
                    extra[f"{who}_{where}"]["predicted_ms"] = latency_on_target(m, spec, tgt, plan=pp).latency_ms
            except Exception as exc:  # a comparison figure only: never worth the run
                rep.message(f"no prediction for this machine's {where}: {type(exc).__name__}: {exc}")
    extra["exports"] = checks  # report.json lifts it out of the measurements (report.schema.build_report)
    return artifacts, s_counts, s_lat, extra
