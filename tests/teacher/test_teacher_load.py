"""Teacher loading: each format, safety, metadata and every error."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

from kd_compile.errors import CheckpointError
from kd_compile.teacher import load_teacher


def _net(classes: int = 5) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, classes),
    ).eval()


def _same(a: nn.Module, b: nn.Module, shape=(2, 1, 12, 12)) -> None:
    x = torch.randn(shape)
    with torch.inference_mode():
        torch.testing.assert_close(a(x), b(x))


def test_torchscript_with_metadata(tmp_path):
    m = _net()
    p = tmp_path / "t.pt"
    torch.jit.save(
        torch.jit.trace(m, torch.zeros(1, 1, 12, 12)),
        str(p),
        _extra_files={"kd_compile.json": json.dumps({"input_shape": [1, 12, 12], "num_classes": 5})},
    )
    t = load_teacher(p)
    assert t.input_shape == (1, 12, 12) and t.num_classes == 5 and t.meta["format"] == "torchscript"
    _same(t.module, m)


def test_torchscript_shape_from_trace_else_needed(tmp_path):
    p = tmp_path / "t.pt"
    torch.jit.save(torch.jit.trace(_net(), torch.zeros(1, 1, 12, 12)), str(p))
    assert load_teacher(p).input_shape == (1, 12, 12)  # the traced example input
    s = tmp_path / "s.pt"
    torch.jit.save(torch.jit.script(_net()), str(s))
    with pytest.raises(CheckpointError, match="input shape is unknown"):
        load_teacher(s)
    t = load_teacher(s, input_shape=(1, 12, 12))
    assert t.num_classes == 5


def test_torch_export_program(tmp_path):
    m = _net(7)
    ep = torch.export.export(
        m, (torch.zeros(2, 1, 12, 12),), dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},)
    )
    p = tmp_path / "t.pt2"
    torch.export.save(ep, str(p))
    t = load_teacher(p, input_shape=(1, 12, 12))
    assert t.num_classes == 7 and t.meta["format"] == "torch.export"
    _same(t.module, m)


def test_timm_state_dict_and_safetensors(tmp_path):
    import timm
    from safetensors.torch import save_file

    m = timm.create_model("test_resnet", num_classes=4, in_chans=1, pretrained=False).eval()
    sd_path = tmp_path / "w.pth"
    torch.save(m.state_dict(), sd_path)
    t = load_teacher(sd_path, arch="test_resnet", input_shape=(1, 32, 32))
    assert t.num_classes == 4  # inferred from the classifier weights
    _same(t.module, m, (2, 1, 32, 32))
    st = tmp_path / "w.safetensors"
    save_file(
        m.state_dict(), str(st), metadata={"kd_compile.json": json.dumps({"arch": "test_resnet", "num_classes": 4})}
    )
    t2 = load_teacher(st, input_shape=(1, 32, 32))
    assert t2.meta["arch"] == "test_resnet"
    _same(t2.module, m, (2, 1, 32, 32))


def test_a_class_count_the_timm_weights_contradict_is_named(tmp_path):
    """--num-classes against a timm state_dict whose classifier has another width: the error says
    both counts, not only that two tensors have another shape."""
    import timm

    p = tmp_path / "w.pth"
    torch.save(timm.create_model("test_resnet", num_classes=4, in_chans=1).state_dict(), p)
    with pytest.raises(CheckpointError, match=r"classifier \(fc\) outputs 4 classes, not the 5 given"):
        load_teacher(p, arch="test_resnet", num_classes=5, input_shape=(1, 32, 32))
    assert load_teacher(p, arch="test_resnet", num_classes=4, input_shape=(1, 32, 32)).num_classes == 4


def test_state_dict_without_arch_is_explained(tmp_path):
    p = tmp_path / "w.pth"
    torch.save(_net().state_dict(), p)
    with pytest.raises(CheckpointError, match="--arch"):
        load_teacher(p, input_shape=(1, 12, 12))


def test_pickled_module_refused_unless_trusted(tmp_path):
    m = _net()
    p = tmp_path / "m.pt"
    torch.save(m, p)
    with pytest.raises(CheckpointError, match="refused to unpickle") as info:
        load_teacher(p, input_shape=(1, 12, 12))
    assert "--trust-checkpoint" in info.value.line()
    t = load_teacher(p, input_shape=(1, 12, 12), trust_checkpoint=True)
    assert t.meta["format"] == "pickled-module"
    _same(t.module, m)


@pytest.mark.parametrize(
    ("content", "match"),
    [(None, "not found"), (b"", "empty"), (b"garbage bytes that are not a checkpoint" * 3, "cannot read checkpoint")],
)
def test_missing_empty_corrupt(tmp_path, content, match):
    p = tmp_path / "bad.pt"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        load_teacher(p)


@pytest.mark.parametrize(
    ("name", "hint"),
    [("resnet18", "timm:resnet18 or torchvision:resnet18"),  # both families have it
     ("resnet10t", "timm:resnet10t"),  # timm alone
     ("mobilenet_v3_large", "torchvision:mobilenet_v3_large"),  # torchvision alone (timm: mobilenetv3_large_100)
     ("fasterrcnn_resnet50_fpn", None),  # a torchvision detector: no torchvision: spec builds it
     ("my_teacher", None)],
)
def test_a_missing_checkpoint_named_like_a_model_is_pointed_to_its_specs(tmp_path, monkeypatch, name, hint):
    monkeypatch.chdir(tmp_path)  # no file of that name here
    with pytest.raises(CheckpointError, match="not found") as info:
        load_teacher(name)
    line = info.value.line()
    if hint is None:
        assert "a model by name" not in line
    else:
        assert line.endswith(f"(a model by name is a spec: {hint})"), line


def test_truncated_zip_is_corrupt(tmp_path):
    p = tmp_path / "t.pt"
    torch.jit.save(torch.jit.trace(_net(), torch.zeros(1, 1, 12, 12)), str(p))
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        load_teacher(p, input_shape=(1, 12, 12))


def test_class_count_and_shape_mismatch(tmp_path):
    p = tmp_path / "t.pt"
    torch.jit.save(
        torch.jit.trace(_net(5), torch.zeros(1, 1, 12, 12)),
        str(p),
        _extra_files={"kd_compile.json": json.dumps({"input_shape": [1, 12, 12]})},
    )
    with pytest.raises(CheckpointError, match="class-count mismatch.*outputs 5"):
        load_teacher(p, num_classes=10)
    with pytest.raises(CheckpointError, match="input shape mismatch"):
        load_teacher(p, input_shape=(3, 12, 12))


def test_wrong_input_channels_is_clear(tmp_path):
    p = tmp_path / "t.pt"
    torch.jit.save(torch.jit.trace(_net(), torch.zeros(1, 1, 12, 12)), str(p))
    with pytest.raises(CheckpointError, match="does not run on input"):
        load_teacher(p, input_shape=(3, 12, 12))


def test_unknown_timm_arch_suggests(tmp_path):
    p = tmp_path / "w.pth"
    torch.save(_net().state_dict(), p)
    with pytest.raises(CheckpointError, match="unknown timm architecture 'resnt18'.*resnet18"):
        load_teacher(p, arch="resnt18")
