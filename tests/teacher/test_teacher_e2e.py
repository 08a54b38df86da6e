"""Every documented teacher format through the whole pipeline: load, count, search, train, export.

Each test saves a digits-trained teacher in one format and runs ``kd_compile.compile`` with a
minimal budget. The teacher's validation accuracy in the report must equal the one measured when
it was trained: proof that it is fed the input size and normalisation it was trained with.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import kd_compile

TINY = dict(
    data="digits",
    budget=1,
    proxy_epochs=0.2,
    final_epochs=0.2,
    max_latency="none",
    compare_ce=False,
    strategy="random",
    seed=0,
)


def _compile(teacher: Path, out: Path, **options: object) -> dict:
    res = kd_compile.compile(str(teacher), out=out, **{**TINY, **options})
    assert (out / "student.pt").is_file() and (out / "student.onnx").is_file()
    assert isinstance(res.student, torch.nn.Module)
    report = json.loads((out / "report.json").read_text())
    assert report["student"]["params"] > 0 and report["teacher"]["flops"] > 0
    return report


def test_torchscript_scripted(net_teacher, tmp_path):
    p = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(net_teacher.module), str(p))
    r = _compile(p, tmp_path / "out")  # no --input-shape: the data's size
    assert r["teacher"]["format"] == "torchscript" and r["teacher"]["input_shape"] == [1, 16, 16]
    assert r["teacher"]["val_accuracy"] == pytest.approx(net_teacher.accuracy)


def test_torchscript_traced(net_teacher, tmp_path):
    p = tmp_path / "traced.pt"
    torch.jit.save(torch.jit.trace(net_teacher.module, torch.zeros(1, 1, 16, 16)), str(p))
    r = _compile(p, tmp_path / "out")
    assert r["teacher"]["format"] == "torchscript"
    assert r["teacher"]["val_accuracy"] == pytest.approx(net_teacher.accuracy)


def test_torch_export_batch_one(net_teacher, tmp_path):
    p = tmp_path / "fixed.pt2"
    # exported the usual way: the batch size is fixed at 1
    torch.export.save(torch.export.export(net_teacher.module, (torch.randn(1, 1, 16, 16),)), str(p))
    r = _compile(p, tmp_path / "out")
    assert r["teacher"]["format"] == "torch.export"
    assert r["teacher"]["val_accuracy"] == pytest.approx(net_teacher.accuracy)


def test_safetensors_with_arch(timm_teacher, tmp_path):
    from safetensors.torch import save_file

    p = tmp_path / "w.safetensors"
    save_file(timm_teacher.module.state_dict(), str(p))
    r = _compile(p, tmp_path / "out", arch="test_resnet")
    # 16 px (the data's), not timm's 160; timm's mean/std (0.5), not the data's
    assert r["teacher"]["input_shape"] == [3, 16, 16]
    assert r["teacher"]["val_accuracy"] == pytest.approx(timm_teacher.accuracy)


def test_training_dict_with_arch(timm_teacher, tmp_path):
    p = tmp_path / "checkpoint.pth"
    model = timm_teacher.module
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sd = {f"module.{k}": v for k, v in model.state_dict().items()}  # saved from DataParallel
    torch.save({"epoch": 3, "model": sd, "optimizer": opt.state_dict(), "best_acc": 0.9}, p)
    r = _compile(p, tmp_path / "out", arch="test_resnet")
    assert r["teacher"]["format"] == "timm+state_dict"
    assert r["teacher"]["val_accuracy"] == pytest.approx(timm_teacher.accuracy)


def test_whole_module_with_trust(net_teacher, tmp_path):
    p = tmp_path / "whole.pt"
    torch.save(net_teacher.module, p)
    r = _compile(p, tmp_path / "out", trust_checkpoint=True)
    assert r["teacher"]["format"] == "pickled-module"
    assert r["teacher"]["val_accuracy"] == pytest.approx(net_teacher.accuracy)
