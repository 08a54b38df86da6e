"""Every example runs, each with a small budget, as a user would start it (a fresh process)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_train_teacher_example_writes_a_loadable_teacher(tmp_path):
    from kd_compile.teacher import load_teacher

    out = tmp_path / "teacher.pt"
    data = "glyphs:size=16,train=400,val=200"
    res = _run("glyphs/train_teacher.py", "--epochs", "0.2", "--data", data, "--out", str(out))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "val accuracy" in res.stdout
    t = load_teacher(out)
    assert t.input_shape == (1, 16, 16) and t.num_classes == 62
    assert t.module(torch.zeros(2, 1, 16, 16)).shape == (2, 62)


def test_python_api_example_compiles_a_student(digits_teacher, tmp_path):
    out = tmp_path / "api"
    res = _run(
        "python_api.py", "--teacher", str(digits_teacher), "--max-params", "12K", "--max-latency", "none",
        "--budget", "2", "--proxy-epochs", "0.3", "--final-epochs", "0.5", "--out", str(out),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    assert "student " in res.stdout and "Pareto front" in res.stdout
    assert (out / "student.pt").is_file() and (out / "report.json").is_file()
