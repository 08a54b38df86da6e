"""The CLI through Typer's test runner: every user error is one line with its own exit code."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from kd_compile.cli import app
from kd_compile.errors import (
    CheckpointError,
    ConstraintError,
    DataError,
    OutputExistsError,
    TargetError,
    UsageError,
)

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args))


def _one_line_error(res) -> str:
    out = res.output.strip()
    assert "Traceback" not in out, out
    lines = [line for line in out.splitlines() if line.startswith("kd-compile: error:")]
    assert len(lines) == 1, out
    return lines[0]


def test_help_and_version():
    assert run("--help").exit_code == 0
    res = run("--version")
    assert res.exit_code == 0 and "kd-compile" in res.output


@pytest.mark.parametrize("args", [(), ("targets",)])
def test_a_group_called_without_arguments_prints_its_help_once(args):
    res = run(*args)
    assert res.output.count("Usage:") == 1, res.output
    assert res.exit_code == 2 and "Traceback" not in res.output


def test_targets_list_and_show():
    res = run("targets", "list")
    assert res.exit_code == 0
    for name in ("2080ti", "cpu", "t4", "h100"):
        assert name in res.output
    res = run("targets", "show", "2080ti", "--json")
    assert res.exit_code == 0
    d = json.loads(res.output)
    assert d["name"] == "2080ti" and d["sources"] and d["tdp_w"] == 260.0 and d["process_nm"] == 12.0
    res = run("targets", "show", "t4")  # the table names the power limit the predictor caps tensor cores by
    assert res.exit_code == 0 and re.search(r"power limit\s+70 W", res.output)
    assert re.search(r"process node\s+12 nm", res.output)  # and the node that sets its work per joule
    cpu = run("targets", "show", "cpu").output
    assert "power limit" not in cpu and "process node" not in cpu
    # the CPU's predictions carry the band of its own measured table (benchmarks/cpu_table.py)
    assert re.search(r"onnxruntime/fp32/batch1\s+±\d+% median, \d+% p80 error held out \(fitted on this device", cpu)


def test_targets_show_local_is_what_target_local_profiles() -> None:
    """``--target local`` is this machine; ``targets show local`` shows the same profile."""
    import torch

    from kd_compile.latency import local_target

    res = run("targets", "show", "local", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["name"] == local_target().name == ("local" if torch.cuda.is_available() else "cpu")


def test_targets_show_says_when_a_profile_gives_a_power_limit_but_no_process_node(tmp_path):
    """A user's profile with ``tdp_w`` but no ``process_nm`` is capped at a 12-nm board's work per joule:
    ``targets show`` says so, and names the field to set."""
    src = (Path(__file__).resolve().parents[1] / "kd_compile" / "targets" / "l4.toml").read_text(encoding="utf-8")
    lines = [ln for ln in src.splitlines() if not ln.startswith("process_nm")]
    toml = tmp_path / "my-l4.toml"
    toml.write_text("\n".join(lines).replace('name = "l4"', 'name = "my-l4"') + "\n", encoding="utf-8")
    res = run("targets", "show", str(toml))
    assert res.exit_code == 0, res.output
    assert re.search(r"process node\s+not given: the power cap assumes a 12-nm board \(set process_nm\)", res.output)
    assert re.search(r"process node\s+4 nm", run("targets", "show", "l4").output)


def test_targets_show_gives_what_tables_no_fit_reads_measured_on_the_gpu():
    """``targets show`` lists, per runtime and precision, the out-of-sample figures a prediction for an
    ImageNet-size model on that GPU carries; a GPU none of those tables measured lists none."""
    out = run("targets", "show", "2080ti").output
    assert "for ImageNet-size models (64 px or more), from tables no fit reads:" in out
    fp32 = next(ln for ln in out.splitlines() if re.match(r"\s+torch/fp32/large\s+out of sample on this GPU:", ln))
    assert "torchvision models (ryujaehun/pytorch-gpu-benchmark; 32 at batch 12, 224 px)" in fp32
    assert "OFA MobileNetV3 subnets (HELP; " in fp32
    assert re.search(r"torch/fp32/batch1\s+out of sample on this GPU: OFA MobileNetV3 subnets", out)
    assert "tables no fit reads" not in run("targets", "show", "h100").output


def test_unknown_target_suggests_close_names():
    res = run("targets", "show", "2080")
    assert res.exit_code == TargetError.exit_code
    assert "2080ti" in _one_line_error(res)


def test_missing_teacher(tmp_path):
    res = run(str(tmp_path / "nope.pt"), "--target", "2080ti", "--out", str(tmp_path / "o"))
    assert res.exit_code == CheckpointError.exit_code
    assert "not found" in _one_line_error(res)


def test_corrupt_teacher(tmp_path):
    p = tmp_path / "bad.pt"
    p.write_bytes(b"\x00" * 64)
    res = run(str(p), "--out", str(tmp_path / "o"))
    assert res.exit_code == CheckpointError.exit_code
    _one_line_error(res)


def test_bad_size_and_latency(digits_teacher, tmp_path):
    res = run(str(digits_teacher), "--max-params", "4X", "--out", str(tmp_path / "o"))
    assert res.exit_code == UsageError.exit_code and "--max-params" in _one_line_error(res)
    res = run(str(digits_teacher), "--max-latency", "fast", "--out", str(tmp_path / "o"))
    assert res.exit_code == UsageError.exit_code and "--max-latency" in _one_line_error(res)


def test_unknown_target_in_compile(digits_teacher, tmp_path):
    res = run(str(digits_teacher), "--target", "rtx2080ti", "--out", str(tmp_path / "o"))
    assert res.exit_code == TargetError.exit_code
    assert "did you mean" in _one_line_error(res)


def test_impossible_constraints(digits_teacher, tmp_path):
    res = run(str(digits_teacher), "--max-params", "50", "--out", str(tmp_path / "o"))
    assert res.exit_code == ConstraintError.exit_code
    assert "--max-params" in _one_line_error(res)


def test_empty_data(digits_teacher, tmp_path):
    p = tmp_path / "empty.npz"
    np.savez(p, x=np.zeros((0, 12, 12), np.uint8), y=np.zeros((0,), np.int64))
    res = run(str(digits_teacher), "--data", str(p), "--out", str(tmp_path / "o"))
    assert res.exit_code == DataError.exit_code
    _one_line_error(res)


def test_class_count_mismatch(digits_teacher, tmp_path):
    rng = np.random.default_rng(0)
    p = tmp_path / "three.npz"
    np.savez(p, x=rng.integers(0, 255, (60, 12, 12), dtype=np.uint8), y=np.arange(60) % 3)
    res = run(str(digits_teacher), "--data", str(p), "--out", str(tmp_path / "o"))
    assert res.exit_code == DataError.exit_code
    assert "class-count mismatch" in _one_line_error(res)


def test_output_exists_without_force(digits_teacher, tmp_path):
    o = tmp_path / "o"
    o.mkdir()
    (o / "something").write_text("keep me")
    res = run(str(digits_teacher), "--out", str(o))
    assert res.exit_code == OutputExistsError.exit_code
    assert "--force" in _one_line_error(res)
    assert (o / "something").read_text() == "keep me"


def test_unknown_strategy(digits_teacher, tmp_path):
    res = run(str(digits_teacher), "--strategy", "turbbo", "--out", str(tmp_path / "o"))
    assert res.exit_code == UsageError.exit_code
    assert "turbo" in _one_line_error(res)


def test_compile_json_via_cli(digits_teacher, tmp_path):
    o = tmp_path / "o"
    res = run(
        str(digits_teacher),
        "--target",
        "2080ti",
        "--max-params",
        "12K",
        "--budget",
        "2",
        "--proxy-epochs",
        "0.5",
        "--proxy-sparsity",
        "0.5",
        "--proxy-patience",
        "1",
        "--final-epochs",
        "0.5",
        "--strategy",
        "random",
        "--no-compare-ce",
        "--max-latency",
        "none",
        "--out",
        str(o),
        "--json",
    )
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout[res.stdout.index("{") :])
    assert d["student"]["params"] <= 12_000
    assert (o / "student.onnx").is_file()
    # a second run into the same folder needs --force
    res2 = run(str(digits_teacher), "--out", str(o))
    assert res2.exit_code == OutputExistsError.exit_code


@pytest.mark.parametrize(
    ("option", "value"), [("--proxy-sparsity", "1.5"), ("--proxy-patience", "0"), ("--augment", "-1")]
)
def test_bad_proxy_knobs(digits_teacher, tmp_path, option, value):
    res = run(str(digits_teacher), option, value, "--out", str(tmp_path / "o"))
    assert res.exit_code == UsageError.exit_code
    assert option in _one_line_error(res)
    assert not (tmp_path / "o").exists()  # refused before any work or output


@pytest.mark.parametrize("shape", ["1,2", "a,b,c", "0,12,12"])
def test_bad_input_shape(digits_teacher, tmp_path, shape):
    res = run(str(digits_teacher), "--input-shape", shape, "--out", str(tmp_path / "o"))
    assert res.exit_code == UsageError.exit_code
    assert "--input-shape" in _one_line_error(res)


def test_profile_measures_here_and_predicts_elsewhere(digits_teacher):
    here = run("profile", str(digits_teacher), "--target", "cpu", "--json")
    assert here.exit_code == 0, here.output
    d = json.loads(here.stdout)
    assert d["method"] == "measured" and d["latency_ms"] > 0 and d["runtime"] == "onnxruntime"
    there = run("profile", str(digits_teacher), "--target", "2080ti", "--json")
    assert there.exit_code == 0 and json.loads(there.stdout)["method"] == "predicted"
    band = json.loads(there.stdout)["extra"]["error_band"]
    line = run("profile", str(digits_teacher), "--target", "2080ti")
    assert line.exit_code == 0 and "predicted with tensorrt fp16" in line.stdout
    # the plain line carries the same held-out error band as the JSON
    assert f"error band: ±{100 * band['median_ape']:.0f}% median" in line.stdout and band["basis"] in line.stdout
    assert "error band" not in run("profile", str(digits_teacher), "--target", "cpu").stdout  # measured
    refused = run("profile", str(digits_teacher), "--target", "2080ti", "--method", "measure")
    if not torch.cuda.is_available():
        assert refused.exit_code == UsageError.exit_code and "cannot measure on '2080ti'" in _one_line_error(refused)
