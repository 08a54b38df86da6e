"""Architecture specs (kd_compile/students/specs.py): parsing, building, and their use as teachers/profile targets."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import torch

import kd_compile
from kd_compile.errors import UsageError
from kd_compile.students.specs import SPEC_PREFIXES, build_spec, is_spec
from kd_compile.teacher import load_teacher
from kd_compile.testing.spaces import single_thread

NB201 = "nb201:|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"
FBNET = "fbnet:7-8-1-8-4-8-8-8-7-4-1-4-7-3-2-7-3-2-4-2-4-5"
OFA = "ofa:136/2-2-2-2-2/k3e3-k3e4|k5e3-k3e4|k3e3-k7e6|k3e4-k3e4|k5e3-k3e6"
ANB = "anb:e6k3l1s0-e4k5l2s1-e6k3l3s0-e6k5l3s0-e6k5l2s0-e1k3l2s0-e1k3l2s1"
ONE_PER_FAMILY = {
    NB201: ((3, 32, 32), 10),
    FBNET: ((3, 32, 32), 100),
    OFA: ((3, 136, 136), 1000),
    ANB: ((3, 224, 224), 1000),
    "torchvision:mobilenet_v3_small": ((3, 224, 224), 1000),
    "timm:resnet18": ((3, 224, 224), 1000),
}


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    with single_thread():
        yield


def test_every_family_has_an_example() -> None:
    assert set(SPEC_PREFIXES) == {s.partition(":")[0] for s in ONE_PER_FAMILY}


def test_is_spec() -> None:
    assert all(is_spec(s) for s in ONE_PER_FAMILY)
    for text in ("teacher.pt", "runs/ofa/student.pt", "resnet18", "foo:bar", "", "C:/models/x.pt"):
        assert not is_spec(text)


@pytest.mark.parametrize("spec", list(ONE_PER_FAMILY))
def test_build_shapes_and_classes(spec: str) -> None:
    shape, classes = ONE_PER_FAMILY[spec]
    model, got = build_spec(spec)
    assert got == shape and not model.training
    side = min(shape[1], 64)  # every family is fully convolutional: run it small
    with torch.no_grad():
        assert model(torch.randn(1, 3, side, side)).shape == (1, classes)
    model, _ = build_spec(spec, num_classes=7)
    with torch.no_grad():
        assert model(torch.randn(1, 3, side, side)).shape == (1, 7)


def test_zoo_input_sizes_come_from_their_configs() -> None:
    assert build_spec("torchvision:efficientnet_b1")[1] == (3, 240, 240)
    assert build_spec("timm:efficientnet_b3")[1] == (3, 288, 288)


@pytest.mark.parametrize(
    "bad",
    [
        "nb201:",
        "nb201:|nor_conv_3x3~0|",
        "nb201:|conv~0|+|none~0|none~1|+|none~0|none~1|none~2|",
        "fbnet:k3_e1|k3_e1",
        "fbnet:1-2-3",
        "ofa:204/2-2-2-2-3/k7e6",
        "ofa:big/2-2-2-2-3/k7e6-k5e4|k7e6-k7e3|k5e3-k7e6|k5e3-k3e6|k5e6-k3e4-k5e3",
        "anb:e6k3l1s0",
        "anb:e6k9l1s0-e4k5l2s1-e6k3l3s0-e6k5l3s0-e6k5l2s0-e1k3l2s0-e1k3l2s1",
        "torchvision:resnet19",
        "timm:not_a_model",
        "resnet18",
        "keras:resnet18",
    ],
)
def test_malformed_specs_give_one_line_usage_errors(bad: str) -> None:
    with pytest.raises(UsageError) as info:
        build_spec(bad)
    assert "\n" not in str(info.value) and len(str(info.value)) > 20


def test_bad_class_count() -> None:
    with pytest.raises(UsageError, match="num_classes"):
        build_spec(NB201, num_classes=0)


def test_load_teacher_accepts_specs() -> None:
    t = load_teacher(OFA)
    assert t.input_shape == (3, 136, 136) and t.num_classes == 1000
    assert t.meta["format"] == "spec" and t.meta["arch"] == OFA
    t = load_teacher(NB201, num_classes=100, input_shape=(3, 16, 16))
    assert t.input_shape == (3, 16, 16) and t.num_classes == 100


@pytest.mark.parametrize("spec", list(ONE_PER_FAMILY))
def test_profile_predicts_every_family(spec: str) -> None:
    d = kd_compile.profile(spec, target="2080ti", method="predict")
    assert d["latency_ms"] > 0 and d["params"] > 0 and d["flops"] > 0
    assert tuple(d["input_shape"]) == ONE_PER_FAMILY[spec][0]


def test_profile_image_size_override() -> None:
    d = kd_compile.profile(
        NB201, target="2080ti", runtime="torch", precision="fp32", batch=64, image_size=64, method="predict"
    )
    assert d["input_shape"] == [3, 64, 64] and d["batch"] == 64 and d["latency_ms"] > 0


def test_cli_profile_spec() -> None:
    from typer.testing import CliRunner

    from kd_compile.cli import app

    res = CliRunner().invoke(app, ["profile", NB201, "--target", "2080ti", "--method", "predict", "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)
    assert d["input_shape"] == [3, 32, 32] and d["latency_ms"] > 0
    res = CliRunner().invoke(app, ["profile", "ofa:204/2-2", "--target", "2080ti", "--method", "predict"])
    assert res.exit_code == 2 and "expected" in res.output
