"""The teacher-derived family ``teacher-family`` (kd_compile/students/timm_family.py): a timm ResNet
or EfficientNet teacher's own family at smaller depths and widths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from students_support import samples
from typer.testing import CliRunner

from kd_compile.cli import app
from kd_compile.errors import UsageError
from kd_compile.export import space_kwargs
from kd_compile.students import create_space, list_spaces, space_for_teacher
from kd_compile.students.timm_family import TimmFamilySpace, teacher_timm_arch
from kd_compile.teacher import load_teacher
from kd_compile.testing.spaces import param_count

SMALL = (3, 64, 64)  # forwards at 64 px keep the test fast; the counts do not depend on it
ARCHS = ["resnet18", "efficientnet_b0"]
GLYPH_TEACHER = Path(__file__).resolve().parents[2] / "examples" / "glyphs" / "teacher.pt"


def _teacher_params(arch: str, classes: int) -> int:
    with torch.device("meta"):
        return param_count(timm.create_model(arch, pretrained=False, num_classes=classes))


def _full(space: TimmFamilySpace) -> dict:
    return {**{p.name: p.high for p in space.params if p.kind == "int"}, "width": 1.0}


def test_registered() -> None:
    assert "teacher-family" in list_spaces()


@pytest.mark.parametrize("arch", ARCHS)
def test_students_are_smaller_members_of_the_teacher_family(arch: str) -> None:
    space = create_space("teacher-family", input_shape=SMALL, num_classes=10, teacher_arch=arch)
    teacher = _teacher_params(arch, 10)
    # the whole depth and width is the teacher's own architecture
    assert space.estimate_params(_full(space)) == teacher
    x = torch.randn(2, *SMALL)
    for cfg in samples(space, 3, seed=1):
        assert cfg != _full(space)
        model = space.build(cfg).eval()
        n = param_count(model)
        assert n == space.deployed_params(cfg) < teacher
        with torch.no_grad():
            assert model(x).shape == (2, 10)
        for name in space.feature_layers(model):
            model.get_submodule(name)
        assert space.describe(cfg).startswith(f"{arch} family | ")
    # fewer blocks or narrower channels both make a smaller student
    full = _full(space)
    assert space.estimate_params(dict(full, d2=1)) < teacher
    assert space.estimate_params(dict(full, width=0.5)) < teacher


@pytest.mark.parametrize("arch", ARCHS)
def test_4m_params_at_224_px_has_feasible_students(arch: str) -> None:
    space = create_space("teacher-family", input_shape=(3, 224, 224), num_classes=1000, teacher_arch=arch)
    counts = [space.deployed_params(c) for c in samples(space, 20)]
    assert any(c <= 4_000_000 for c in counts) and max(counts) <= _teacher_params(arch, 1000)


def test_rebuilds_from_its_arguments() -> None:
    space = create_space("teacher-family", input_shape=SMALL, num_classes=7, teacher_arch="efficientnet_b0")
    again = create_space("teacher-family", **space_kwargs(space))
    cfg = samples(space, 1, seed=4)[0]
    torch.manual_seed(0)
    a = space.build(cfg).state_dict()
    torch.manual_seed(0)
    b = again.build(cfg).state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_from_a_loaded_timm_teacher() -> None:
    tch = load_teacher("timm:resnet18", num_classes=5, input_shape=SMALL)
    assert teacher_timm_arch(tch) == "resnet18"
    space = space_for_teacher("teacher-family", tch)
    assert isinstance(space, TimmFamilySpace)
    assert space.teacher_arch == "resnet18" and space.input_shape == SMALL and space.num_classes == 5
    # any other family is created for the teacher's shape and classes
    assert space_for_teacher("trade", tch).input_shape == SMALL


def test_refuses_teachers_of_other_families() -> None:
    with pytest.raises(UsageError, match="ResNet or EfficientNet"):
        create_space("teacher-family", input_shape=SMALL, num_classes=10, teacher_arch="mobilenetv3_small_050")
    with pytest.raises(UsageError, match="ResNet or EfficientNet"):
        create_space("teacher-family", input_shape=SMALL, num_classes=10, teacher_arch="no_such_model")


def test_cli_with_a_non_timm_teacher_exits_2(tmp_path: Path) -> None:
    res = CliRunner().invoke(
        app, [str(GLYPH_TEACHER), "--space", "teacher-family", "--out", str(tmp_path / "o")]
    )
    out = res.output.strip()
    assert res.exit_code == UsageError.exit_code == 2, out
    assert "Traceback" not in out
    errors = [line for line in out.splitlines() if line.startswith("kd-compile: error:")]
    assert len(errors) == 1 and "timm" in errors[0]
    assert not (tmp_path / "o").exists()


def test_widths_and_depths_bounded_by_the_teacher() -> None:
    space = create_space("teacher-family", input_shape=SMALL, num_classes=10, teacher_arch="resnet50")
    assert [p.high for p in space.params if p.kind == "int"] == [3, 4, 6, 3]
    assert max(space.param("width").choices) == 1.0
    u = np.zeros(space.dim)  # the all-low corner: one block per stage at a quarter width
    assert space.from_unit(u) == {"d1": 1, "d2": 1, "d3": 1, "d4": 1, "width": 0.25}
