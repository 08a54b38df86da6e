"""The teacher is run the way it was trained: input size, channels, mean/std, filter and crop,
each from the options, the checkpoint, the graph, the weights, timm or the data, recorded with
its source, and applied by the data pipeline."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from teacher_support import small_net

from kd_compile.api import Reporter
from kd_compile.config import CompileConfig
from kd_compile.data import Preprocessing, load_data
from kd_compile.errors import CheckpointError, DataError, UsageError
from kd_compile.inputs import load_inputs
from kd_compile.teacher import load_teacher, save_checkpoint


class _Recorder(Reporter):
    def __init__(self) -> None:
        self.messages: list[str] = []

    def message(self, text: str) -> None:
        self.messages.append(text)


@pytest.fixture(scope="module")
def resnet_weights(tmp_path_factory):
    """A state_dict of timm's test_resnet (3 channels, 10 classes) that records nothing else."""
    import timm

    torch.manual_seed(0)
    p = tmp_path_factory.mktemp("w") / "w.pth"
    torch.save(timm.create_model("test_resnet", num_classes=10).state_dict(), p)
    return p


def _scripted(tmp_path, channels=1):
    p = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(small_net(channels).eval()), str(p))
    return p


def test_preprocessing_record_round_trips():
    pre = Preprocessing((3, 8, 8), interpolation="bicubic", crop_pct=0.875, sources=(("size", "--input-size"),))
    filled = pre.with_stats((0.1, 0.2, 0.3), (1.0, 1.0, 1.0), "data")
    assert filled.source("mean") == "data" and filled.size == (8, 8)
    assert filled.with_stats((9.0,) * 3, (9.0,) * 3, "other") is filled  # a mean/std it has stays
    d = filled.to_dict()
    assert json.loads(json.dumps(d)) == d and Preprocessing.from_dict(d) == filled
    assert set(d) == {"input_shape", "mean", "std", "interpolation", "crop_pct", "sources"}


def test_timm_weights_without_a_size_use_the_data_size_and_timm_normalisation(resnet_weights):
    t = load_teacher(resnet_weights, arch="test_resnet", data_shape=(1, 16, 16))
    pre = t.preprocessing
    assert t.input_shape == (3, 16, 16)  # channels from the weights, size from the data
    assert pre.source("channels") == "weights (first conv)" and pre.source("size") == "data (native size)"
    assert pre.mean == (0.5, 0.5, 0.5) and pre.source("mean") == "timm pretrained_cfg (test_resnet)"
    assert pre.crop_pct == 1.0  # timm's ImageNet crop does not apply at the data's own size
    assert "--input-size 160" in t.meta["notes"][0]
    assert t.meta["normalize"] == {"mean": [0.5] * 3, "std": [0.5] * 3}
    assert t.meta["preprocessing"] == pre.to_dict()


def test_timm_weights_without_data_take_timm_defaults(resnet_weights):
    t = load_teacher(resnet_weights, arch="test_resnet")
    assert t.input_shape == (3, 160, 160) and t.preprocessing.crop_pct == 0.95
    assert t.preprocessing.source("crop_pct") == "timm pretrained_cfg (test_resnet)"
    assert "timm's default 160x160" in t.meta["notes"][0]


def test_options_win(resnet_weights):
    t = load_teacher(
        resnet_weights,
        arch="test_resnet",
        input_size=(24, 20),
        mean=(0.2,),
        std=(0.3, 0.4, 0.5),
        interpolation="nearest",
        crop_pct=0.8,
        data_shape=(1, 16, 16),
    )
    pre = t.preprocessing
    assert t.input_shape == (3, 24, 20) and pre.mean == (0.2,) * 3 and pre.std == (0.3, 0.4, 0.5)
    assert (pre.interpolation, pre.crop_pct) == ("nearest", 0.8)
    assert dict(pre.sources) == {
        "channels": "weights (first conv)",
        "size": "--input-size",
        "mean": "--mean",
        "std": "--std",
        "interpolation": "--interpolation",
        "crop_pct": "--crop-pct",
    }


def test_input_size_and_shape_must_agree(tmp_path):
    with pytest.raises(UsageError, match="--input-size"):
        load_teacher(_scripted(tmp_path), input_shape=(1, 16, 16), input_size=(20, 20))


def test_mean_is_fitted_to_the_channels(tmp_path):
    t = load_teacher(_scripted(tmp_path), input_shape=(1, 16, 16), mean=(0.3, 0.6, 0.9), std=(0.5,))
    assert t.preprocessing.mean == pytest.approx((0.6,)) and t.preprocessing.std == (0.5,)


def test_kd_compile_checkpoint_records_its_preprocessing(digits_teacher):
    t = load_teacher(digits_teacher)
    pre = t.preprocessing
    assert t.input_shape == (1, 12, 12) and pre.source("size") == "checkpoint"
    assert pre.mean is not None and pre.source("mean") == "checkpoint"


def test_checkpoint_shape_and_options_disagree(tmp_path):
    p = tmp_path / "t.pt"
    torch.jit.save(
        torch.jit.script(small_net(1).eval()), str(p), _extra_files={"kd_compile.json": '{"input_shape": [1, 16, 16]}'}
    )
    with pytest.raises(CheckpointError, match="input shape mismatch"):
        load_teacher(p, input_size=(20, 20))


def test_unknown_size_asks_for_it(tmp_path):
    with pytest.raises(CheckpointError, match="input shape is unknown") as e:
        load_teacher(_scripted(tmp_path))
    assert "--input-size" in e.value.line()


# ---------------------------------------------------------------------------------------------
# the data pipeline applies it (load_inputs)


def _inputs(teacher, **options):
    rep = _Recorder()
    cfg = CompileConfig.from_options(str(teacher), data="digits", **options)
    return load_inputs(cfg, rep), rep


def test_data_is_normalised_with_the_teachers_statistics(resnet_weights):
    inputs, rep = _inputs(resnet_weights, arch="test_resnet")
    tch, data = inputs.teacher, inputs.data
    assert data.input_shape == (3, 16, 16) and data.mean == (0.5, 0.5, 0.5) and data.std == (0.5, 0.5, 0.5)
    assert tch.preprocessing.source("mean") == "timm pretrained_cfg (test_resnet)"
    assert any("does not record its input size" in m for m in rep.messages)


def test_the_datas_statistics_fill_only_a_gap(tmp_path):
    inputs, rep = _inputs(_scripted(tmp_path))
    plain = load_data("digits")
    assert inputs.data.mean == plain.mean and inputs.teacher.preprocessing.source("mean") == "data"
    assert inputs.teacher.meta["preprocessing"]["mean"] == list(plain.mean)
    assert any("records no normalisation" in m for m in rep.messages)
    inputs, _ = _inputs(_scripted(tmp_path), mean="0.25", std="0.5")
    assert inputs.data.mean == (0.25,) and inputs.data.std == (0.5,)


def test_crop_and_filter_reach_the_data(tmp_path):
    inputs, _ = _inputs(_scripted(tmp_path), crop_pct=0.5, interpolation="bicubic")
    # 16 px at crop 0.5: the digits are generated at 32 px and the centre 16 px kept
    big = load_data("digits:size=32")
    assert torch.equal(inputs.data.x_val, big.x_val[:, :, 8:24, 8:24])
    assert inputs.source.meta["crop_pct"] == 0.5 and inputs.source.meta["interpolation"] == "bicubic"


def _teacher_with_hint(tmp_path, spec: str):
    from kd_compile.export import space_kwargs
    from kd_compile.students import create_space

    space = create_space("cnn", input_shape=(1, 8, 8), num_classes=4, max_depth=1)
    config = space.validate({**space.default(), "depth": 1})
    folder = tmp_path / "ckpt"
    folder.mkdir(exist_ok=True)
    return save_checkpoint(
        folder / "teacher.pt",
        space="cnn",
        space_kwargs=space_kwargs(space),
        config=config,
        state_dict=space.build(config).state_dict(),
        meta={"data": {"spec": spec, "meta": {}}},
    )


def _npz(path):
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.integers(0, 256, (40, 8, 8), dtype=np.uint8), y=np.arange(40) % 4)
    return path


def test_data_hint_resolves_against_the_checkpoint_folder(tmp_path, monkeypatch):
    teacher = _teacher_with_hint(tmp_path, "d.npz")
    _npz(teacher.parent / "d.npz")
    monkeypatch.chdir(tmp_path)  # not the checkpoint's folder
    cfg = CompileConfig.from_options(str(teacher))
    inputs = load_inputs(cfg, _Recorder())
    assert inputs.data.name == str((teacher.parent / "d.npz").resolve())


@pytest.mark.parametrize("spec", ["../outside.npz", "/etc/passwd", "link.npz"])
def test_data_hint_may_not_leave_the_checkpoint_folder(tmp_path, spec):
    teacher = _teacher_with_hint(tmp_path, spec)
    _npz(tmp_path / "outside.npz")
    (teacher.parent / "link.npz").symlink_to(tmp_path / "outside.npz")
    cfg = CompileConfig.from_options(str(teacher))
    with pytest.raises(DataError, match="leads outside the checkpoint's folder"):
        load_inputs(cfg, _Recorder())
