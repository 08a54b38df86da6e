"""The student's deployable files: ONNX metadata read back with onnx, TorchScript and .pt2
exports that load with torch and match the eager student, and an export that cannot be made
recorded as a warning while the ONNX file still ships."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

from kd_compile import __version__
from kd_compile.errors import ExportError
from kd_compile.export import export_pt2, export_student, export_torchscript
from kd_compile.profilers import InputSpec
from kd_compile.students import create_space
from kd_compile.students.common import deployed

SHAPE = (3, 16, 16)
META = {
    "teacher": "teacher.pt",
    "preprocessing": {
        "input_shape": list(SHAPE),
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "interpolation": "bicubic",
        "crop_pct": 0.875,
        "sources": {"mean": "--mean"},
    },
    "class_names": ["cat", "dog", "emu", "fox"],
    "target": "t4",
    "accuracy": 0.5,
    "kd_compile_version": __version__,
}


@pytest.fixture(scope="module")
def student():
    space = create_space("trade", input_shape=SHAPE, num_classes=4)
    config = space.default()
    torch.manual_seed(0)
    model = space.build(config).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so folding has something to fold
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return space, config, model


@pytest.fixture(scope="module")
def exported(student, tmp_path_factory):
    space, config, model = student
    out = tmp_path_factory.mktemp("export")
    checks: dict = {}
    paths = export_student(model, space, config, InputSpec(SHAPE), out, META, engine=False, checks=checks)
    return paths, checks


def test_onnx_metadata_carries_the_preprocessing_classes_version_and_config(student, exported):
    import onnx

    space, config, _ = student
    paths, _ = exported
    props = {p.key: p.value for p in onnx.load(str(paths["student.onnx"])).metadata_props}
    assert json.loads(props["mean"]) == META["preprocessing"]["mean"]
    assert json.loads(props["std"]) == META["preprocessing"]["std"]
    assert props["input_size"] == "16x16" and props["channels"] == "3"
    assert props["interpolation"] == "bicubic" and float(props["crop_pct"]) == 0.875
    assert json.loads(props["class_names"]) == META["class_names"]
    assert props["kd_compile_version"] == __version__ and props["target"] == "t4"
    assert props["student_space"] == space.name and json.loads(props["student_config"]) == json.loads(
        json.dumps(dict(config), default=str)
    )
    assert json.loads(props["preprocessing"])["sources"] == {"mean": "--mean"}
    # ONNX Runtime sees the same metadata
    import onnxruntime as ort

    sess = ort.InferenceSession(str(paths["student.onnx"]), providers=["CPUExecutionProvider"])
    assert sess.get_modelmeta().custom_metadata_map["class_names"] == props["class_names"]


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_and_pt2_load_and_match_the_eager_student(student, exported):
    _, _, model = student
    paths, checks = exported
    assert {"student.pt", "student.onnx", "student.torchscript.pt", "student.pt2"} <= set(paths)
    assert checks["student.torchscript.pt"]["status"] == "ok" and checks["student.pt2"]["status"] == "ok"
    eager = deployed(model)
    scripted = torch.jit.load(str(paths["student.torchscript.pt"]))
    program = torch.export.load(str(paths["student.pt2"])).module()
    batches = (1, 5) if checks["student.pt2"]["dynamic_batch"] else (1,)
    for b in batches:
        x = torch.randn(b, *SHAPE, generator=torch.Generator().manual_seed(b))
        with torch.no_grad():
            ref = model(x)
            torch.testing.assert_close(eager(x), ref, rtol=1e-3, atol=1e-4)
            torch.testing.assert_close(scripted(x), ref, rtol=1e-3, atol=1e-4)
            torch.testing.assert_close(program(x), ref, rtol=1e-3, atol=1e-4)


class _DataDependent(nn.Module):
    """Branches on a tensor's value: traceable (TorchScript, ONNX) but not torch.export-able."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x).mean((2, 3))
        if y.sum() > -1e9:
            return self.fc(y)
        return -self.fc(y)


def test_a_failed_extra_export_is_recorded_and_the_onnx_still_ships(student, tmp_path):
    space, config, _ = student
    model = _DataDependent().eval()
    with pytest.raises(ExportError, match=r"\.pt2 export failed"):
        export_pt2(model, InputSpec(SHAPE), tmp_path / "x.pt2")
    checks: dict = {}
    paths = export_student(model, space, config, InputSpec(SHAPE), tmp_path, META, engine=False, checks=checks)
    assert "student.onnx" in paths and (tmp_path / "student.onnx").is_file()
    assert checks["student.pt2"]["status"] == "failed" and checks["student.pt2"]["error"]
    assert "student.pt2" not in paths and not (tmp_path / "student.pt2").exists()
    assert checks["student.torchscript.pt"]["status"] == "ok"


def test_a_mismatching_export_is_refused(tmp_path):
    class _Noisy(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean((2, 3)) + torch.rand(x.shape[0], 3)  # a fresh draw on every call

    with pytest.raises(ExportError, match="differ from the eager student"):
        export_torchscript(_Noisy().eval(), InputSpec(SHAPE), tmp_path / "n.pt")


class _BatchOne(nn.Module):
    """Pins its batch size to 1 (a reshape to a constant), as many hand-written heads do."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean((2, 3)).reshape(1, -1))


def test_a_batch_pinned_student_is_exported_at_its_batch(tmp_path):
    model, spec = _BatchOne().eval(), InputSpec(SHAPE)
    ts = export_torchscript(model, spec, tmp_path / "s.pt")
    pt2 = export_pt2(model, spec, tmp_path / "s.pt2")
    assert ts["dynamic_batch"] is False and ts["batch"] == 1
    assert pt2["dynamic_batch"] is False and pt2["batch"] == 1
    x = torch.randn(1, *SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(torch.export.load(str(tmp_path / "s.pt2")).module()(x), model(x))
