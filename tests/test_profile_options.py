"""`kd-compile profile` loads a checkpoint with compile's teacher options: a timm state_dict in
a training dict with --arch, its input size and preprocessing; a bad --arch is a one-line exit 3."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from kd_compile import api
from kd_compile.cli import app
from kd_compile.errors import CheckpointError, UsageError


@pytest.fixture(scope="module")
def state_dict_teacher(tmp_path_factory):
    import timm

    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=10)
    path = tmp_path_factory.mktemp("sd") / "teacher_sd.pt"
    torch.save({"epoch": 3, "model": model.state_dict(), "optimizer": {}}, path)
    return path


def test_profile_takes_the_teacher_options(state_dict_teacher):
    args = ["profile", str(state_dict_teacher), "--arch", "resnet18", "--input-size", "32", "--mean", "0.5,0.5,0.5",
            "--std", "0.25", "--interpolation", "bicubic", "--crop-pct", "0.875", "--target", "t4",
            "--method", "predict", "--json"]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert d["input_shape"] == [3, 32, 32] and d["params"] > 10_000_000 and d["method"] == "predicted"
    pre = d["preprocessing"]
    assert pre["mean"] == [0.5, 0.5, 0.5] and pre["std"] == [0.25, 0.25, 0.25]
    assert pre["interpolation"] == "bicubic" and pre["crop_pct"] == 0.875
    # the API takes the same names, as Python values
    d2 = api.profile(str(state_dict_teacher), arch="resnet18", input_shape=(3, 40, 40), target="t4", method="predict")
    assert d2["input_shape"] == [3, 40, 40] and d2["params"] == d["params"]


def test_a_bad_arch_is_a_one_line_exit_3(state_dict_teacher):
    res = CliRunner().invoke(app, ["profile", str(state_dict_teacher), "--arch", "resnet_nope", "--input-size", "32"])
    assert res.exit_code == CheckpointError.exit_code == 3
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "resnet_nope" in lines[0] and "Traceback" not in res.output


def test_a_bad_preprocessing_value_is_a_usage_error(state_dict_teacher):
    res = CliRunner().invoke(app, ["profile", str(state_dict_teacher), "--arch", "resnet18", "--mean", "1,2"])
    assert res.exit_code == UsageError.exit_code and "--mean" in res.output


def test_profile_honours_the_runtime_and_refuses_an_unknown_one(state_dict_teacher):
    eager = api.profile(str(state_dict_teacher), arch="resnet18", input_shape=(3, 32, 32), target="t4",
                        method="predict", runtime="torch", precision="fp32")  # fmt: skip
    assert eager["runtime"] == "torch" and eager["precision"] == "fp32" and eager["method"] == "predicted"
    res = CliRunner().invoke(app, ["profile", str(state_dict_teacher), "--arch", "resnet18", "--runtime", "tvm"])
    assert res.exit_code == UsageError.exit_code and "unknown runtime 'tvm'" in res.output
    assert "Traceback" not in res.output
    res = CliRunner().invoke(app, ["profile", str(state_dict_teacher), "--arch", "resnet18", "--method", "guess"])
    assert res.exit_code == UsageError.exit_code and "--method must be one of" in res.output
