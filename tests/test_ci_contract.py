"""What a CI pipeline relies on: quality gates with their own exit code, JSON errors on stdout,
and --resume on a finished run returning its result without retraining."""

from __future__ import annotations

import json
import time

import pytest
from test_e2e import SMALL
from typer.testing import CliRunner

import kd_compile
from kd_compile.cli import app
from kd_compile.errors import QualityGateError, UsageError

OPTS = {**SMALL, "budget": 1, "compare_ce": False}


def test_a_failed_gate_exits_13_after_writing_the_report(digits_teacher, tmp_path):
    out = tmp_path / "gated"
    with pytest.raises(QualityGateError, match="min_accuracy") as e:
        kd_compile.compile(str(digits_teacher), out=out, min_accuracy=0.999, max_accuracy_drop=100, **OPTS)
    assert e.value.exit_code == 13
    r = json.loads((out / "report.json").read_text())
    assert r["gates"]["min_accuracy"]["passed"] is False and r["gates"]["max_accuracy_drop"]["passed"] is True
    assert (out / "student.onnx").is_file()


def test_passed_gates_are_recorded(digits_teacher, tmp_path):
    res = kd_compile.compile(str(digits_teacher), out=tmp_path / "ok", min_accuracy=0.01, min_speedup=1e-6, **OPTS)
    assert all(g["passed"] for g in res.report["gates"].values()) and set(res.report["gates"]) == {
        "min_accuracy",
        "min_speedup",
    }


def test_json_mode_prints_a_json_error_object(digits_teacher, tmp_path):
    res = CliRunner().invoke(app, [str(digits_teacher), "--max-params", "4X", "--out", str(tmp_path / "o"), "--json"])
    assert res.exit_code == UsageError.exit_code
    err = json.loads(res.stdout)["error"]
    assert err["exit_code"] == 2 and err["type"] == "UsageError" and "--max-params" in err["message"]


def test_resume_on_a_finished_run_returns_it_without_retraining(digits_teacher, tmp_path):
    out = tmp_path / "done"
    first = kd_compile.compile(str(digits_teacher), out=out, **OPTS)
    journal = (out / "journal.jsonl").read_bytes()
    t0 = time.perf_counter()
    again = kd_compile.compile(str(digits_teacher), out=out, resume=True, **OPTS)
    assert time.perf_counter() - t0 < 30
    assert (out / "journal.jsonl").read_bytes() == journal  # nothing appended, nothing retrained
    assert again.report == first.report and again.config == first.config
    assert [t.config for t in again.trials] == [t.config for t in first.trials]
