"""Tests of the helpers the built-in families share (kd_compile/students/common.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kd_compile.errors import UsageError
from kd_compile.students import create_space
from kd_compile.students.common import (
    channel_choices,
    conv_bn_params,
    feature_layers,
    init_weights,
    meta_param_count,
)


def test_channel_choices_are_distinct_multiples_of_8() -> None:
    assert channel_choices((8, 16, 24, 32), 1.0) == (8, 16, 24, 32)
    assert channel_choices((8, 16, 24), 0.5) == (8, 16)  # 4 and 8 both round to 8: merged
    assert channel_choices((24, 32), 1.5) == (40, 48)  # 36 rounds up to 40


def test_conv_bn_params() -> None:
    conv = nn.Sequential(nn.Conv2d(6, 12, 3, groups=3, bias=False), nn.BatchNorm2d(12))
    assert conv_bn_params(6, 12, 3, groups=3) == sum(p.numel() for p in conv.parameters())


def test_init_weights_follows_the_torch_rng() -> None:
    def make() -> nn.Module:
        m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.LayerNorm(8), nn.Linear(8, 4))
        init_weights(m)
        return m

    torch.manual_seed(0)
    a = make().state_dict()
    torch.manual_seed(0)
    b = make().state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(a["0.bias"], torch.zeros(8)) and torch.equal(a["1.weight"], torch.ones(8))
    assert torch.equal(a["4.bias"], torch.zeros(4)) and float(a["4.weight"].abs().max()) <= 0.04


def test_meta_param_count_and_feature_layers() -> None:
    space = create_space("cnn", input_shape=(1, 16, 16), num_classes=5)
    cfg = space.default()
    model = space.build(cfg)
    assert meta_param_count(space.build, cfg) == sum(p.numel() for p in model.parameters())
    assert feature_layers(model) == ["layers.l1", "layers.l2", "layers.l3"]
    with pytest.raises(UsageError, match="feature_names"):
        feature_layers(nn.Linear(2, 2))
