"""Checkpoints as people save them: training dicts, wrapper prefixes, graph example inputs,
fixed-batch exports, and TorchScript teachers that the counting pass can count."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from teacher_support import small_net

from kd_compile.errors import CheckpointError
from kd_compile.profilers import InputSpec
from kd_compile.profilers.counting import count
from kd_compile.teacher import load_teacher


@pytest.fixture(scope="module")
def resnet():
    import timm

    torch.manual_seed(0)
    return timm.create_model("test_resnet", num_classes=4, in_chans=1).eval()


def _same(a: torch.nn.Module, b: torch.nn.Module, shape=(3, 1, 16, 16)) -> None:
    x = torch.randn(shape)
    with torch.inference_mode():
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("key", "prefix"),
    [
        ("model", ""),
        ("state_dict", "module."),
        ("model_state_dict", "_orig_mod."),
        ("ema", "module._orig_mod."),
        ("model_ema", ""),
        ("net", "model."),
    ],
)
def test_training_dict_layouts_and_prefixes(resnet, tmp_path, key, prefix):
    sd = {prefix + k: v for k, v in resnet.state_dict().items()}
    opt = torch.optim.SGD(resnet.parameters(), lr=0.1, momentum=0.9)
    p = tmp_path / "ckpt.pth"
    torch.save({"epoch": 7, key: sd, "optimizer": opt.state_dict(), "best": 0.5}, p)
    t = load_teacher(p, arch="test_resnet", input_shape=(1, 16, 16))
    assert t.num_classes == 4 and t.meta["state_dict_key"] == key and t.meta.get("stripped_prefix", "") == prefix
    assert t.meta["epoch"] == 7 and "optimizer" not in t.meta  # its state is no metadata
    _same(t.module, resnet)


def test_lightning_state_dict_with_other_modules(resnet, tmp_path):
    sd = {f"model.{k}": v for k, v in resnet.state_dict().items()}
    sd["criterion.weight"] = torch.ones(4)  # another module of the LightningModule
    p = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": sd, "hyper_parameters": {"lr": 0.1, "img_size": 16}, "epoch": 2}, p)
    t = load_teacher(p, arch="test_resnet")
    assert t.input_shape == (1, 16, 16)  # channels from the weights, size from the hyper-parameters
    assert t.preprocessing.source("size") == "checkpoint"
    assert t.preprocessing.source("channels") == "weights (first conv)"
    _same(t.module, resnet)


def test_timm_train_checkpoint_needs_no_arch(resnet, tmp_path):
    # what timm's train.py saves: arch, args (a Namespace) and numpy scalars
    args = argparse.Namespace(model="test_resnet", img_size=20, mean=None, std=None, interpolation="", crop_pct=None)
    p = tmp_path / "model_best.pth.tar"
    torch.save(
        {"epoch": 3, "arch": "test_resnet", "state_dict": resnet.state_dict(), "args": args, "metric": np.float64(0.9)},
        p,
    )
    t = load_teacher(p)
    assert t.meta["arch"] == "test_resnet" and t.meta["format"] == "timm+state_dict"
    assert t.input_shape == (1, 20, 20) and t.preprocessing.source("size") == "checkpoint"
    _same(t.module, resnet)


def test_no_state_dict_lists_the_keys(tmp_path):
    p = tmp_path / "opt.pth"
    torch.save({"epoch": 1, "optimizer": {"state": {}, "param_groups": []}, "scheduler": {"last_epoch": 1}}, p)
    with pytest.raises(CheckpointError, match=r"holds no state_dict \(found keys epoch, optimizer, scheduler\)") as e:
        load_teacher(p, arch="test_resnet")
    assert "\n" not in e.value.line()
    with pytest.raises(CheckpointError, match=r"not a model checkpoint \(found keys epoch, optimizer, scheduler\)"):
        load_teacher(p)


def test_weights_without_arch_say_where_they_are(resnet, tmp_path):
    p = tmp_path / "w.pth"
    torch.save({"epoch": 1, "model": resnet.state_dict()}, p)
    with pytest.raises(CheckpointError, match=r"state_dict under 'model'.*--arch"):
        load_teacher(p)


def test_weights_of_another_architecture(resnet, tmp_path):
    p = tmp_path / "w.pth"
    torch.save(resnet.state_dict(), p)
    fits = r"weights do not fit timm 'resnet10t': \d+ (missing|of another shape)"
    with pytest.raises(CheckpointError, match=fits) as e:
        load_teacher(p, arch="resnet10t", input_shape=(1, 16, 16))
    assert "\n" not in e.value.line()


def test_traced_torchscript_carries_its_input_shape(tmp_path):
    m = small_net(3).eval()
    p = tmp_path / "traced.pt"
    torch.jit.save(torch.jit.trace(m, torch.zeros(1, 3, 12, 14)), str(p))
    t = load_teacher(p)
    assert t.input_shape == (3, 12, 14) and t.preprocessing.source("size") == "TorchScript traced input"
    _same(t.module, m, (2, 3, 12, 14))


def test_scripted_torchscript_takes_the_data_size(tmp_path):
    p = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(small_net(1).eval()), str(p))
    t = load_teacher(p, data_shape=(1, 16, 16))
    assert t.input_shape == (1, 16, 16) and t.preprocessing.source("size") == "data (native size)"


def test_rgb_teacher_on_gray_data_takes_three_channels(tmp_path):
    p = tmp_path / "scripted_rgb.pt"
    torch.jit.save(torch.jit.script(small_net(3).eval()), str(p))
    t = load_teacher(p, data_shape=(1, 16, 16))
    assert t.input_shape == (3, 16, 16) and t.preprocessing.source("channels").startswith("teacher")


@pytest.mark.parametrize("batch", [1, 3])
def test_fixed_batch_export_runs_at_its_batch(tmp_path, batch):
    m = small_net(1).eval()
    p = tmp_path / "fixed.pt2"
    torch.export.save(torch.export.export(m, (torch.randn(batch, 1, 16, 16),)), str(p))
    t = load_teacher(p)  # no --input-shape: the example input's
    assert t.input_shape == (1, 16, 16) and t.meta["batch"] == batch
    assert t.preprocessing.source("size") == "torch.export example input"
    assert any("fixed batch size" in n for n in t.meta["notes"])
    x = torch.randn(7, 1, 16, 16)  # not a multiple of the batch: the last chunk is padded
    with torch.inference_mode():
        torch.testing.assert_close(t.module(x), m(x))
        torch.testing.assert_close(t.module(x[:batch]), m(x[:batch]))


def test_dynamic_batch_export_has_no_fixed_batch(tmp_path):
    m = small_net(1).eval()
    p = tmp_path / "dyn.pt2"
    ep = torch.export.export(m, (torch.randn(2, 1, 16, 16),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(ep, str(p))
    t = load_teacher(p)
    assert t.input_shape == (1, 16, 16) and "batch" not in t.meta and not t.meta.get("notes")


def test_torchscript_teacher_is_counted(tmp_path):
    m = small_net(1).eval()
    p = tmp_path / "s.pt"
    torch.jit.save(torch.jit.script(m), str(p))
    t = load_teacher(p, input_shape=(1, 16, 16))
    counted, eager = count(t.module, InputSpec((1, 16, 16))), count(m, InputSpec((1, 16, 16)))
    assert counted.flops == eager.flops > 0 and counted.params == eager.params


def test_torchscript_teacher_profiles(tmp_path):
    from kd_compile.api import profile

    p = tmp_path / "s.pt"
    torch.jit.save(torch.jit.script(small_net(1).eval()), str(p))
    d = profile(str(p), target="2080ti", method="predict", input_shape=(1, 16, 16))
    assert d["flops"] > 0 and d["latency_ms"] > 0
