"""Tests of the plain CNN space (kd_compile/students/cnn.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from students_support import GLYPH, samples

from kd_compile.errors import UsageError
from kd_compile.students import create_space, list_spaces
from kd_compile.students.cnn import CnnNet, CnnSpace
from kd_compile.testing.spaces import param_count

RGB32 = {"input_shape": (3, 32, 32), "num_classes": 10}




def test_registered() -> None:
    assert "cnn" in list_spaces()
    assert isinstance(create_space("cnn", **GLYPH), CnnSpace)


def test_unit_round_trip_is_canonical() -> None:
    space = create_space("cnn", **GLYPH)
    for cfg in samples(space, 40, seed=1):
        assert cfg == space.canonical(cfg)
        u = space.to_unit(cfg)
        assert u.shape == (space.dim,) and np.all((u >= 0) & (u <= 1))
        back = space.from_unit(u)
        assert back == cfg
        assert space.validate(cfg) == cfg


def test_estimate_matches_meta_build() -> None:
    for shape in (GLYPH, {"input_shape": (3, 224, 224), "num_classes": 1000}):
        space = create_space("cnn", **shape)
        for cfg in samples(space, 15, seed=5):
            assert space.estimate_params(cfg) == space.count_params_meta(cfg), space.describe(cfg)


def test_cnn_space() -> None:
    space = create_space("cnn", **RGB32)
    assert isinstance(space, CnnSpace)
    x = torch.randn(2, 3, 32, 32)
    for cfg in samples(space, 10, seed=3):
        model = space.build(cfg).eval()
        assert isinstance(model, CnnNet)
        with torch.no_grad():
            assert model(x).shape == (2, 10)
        assert space.estimate_params(cfg) == param_count(model)
        strides = space.strides(cfg)
        assert strides[0] == 1 and len(strides) == cfg["depth"]
        # the final map keeps at least 3x3 (32 -> 16 -> 8 -> 4 at most)
        assert math.ceil(32 / 2 ** strides.count(2)) >= 3
        assert len(space.feature_layers(model)) == cfg["depth"]
    # keys outside the space (the KD keys of a composed config) are ignored
    cfg = {"depth": 2, "w1": 16, "w2": 32, "w3": 64, "w4": 8, "w5": 8, "kd_tau": 4.0, "kd_alpha": 0.7}
    assert space.describe(cfg) == "conv16 | conv32 /2"
    assert space.key(cfg) == space.key(dict(cfg, w3=128, w4=256))
    assert space.estimate_params(cfg) == (3 * 9 * 16 + 2 * 16) + (16 * 9 * 32 + 2 * 32) + (32 * 10 + 10)


def test_options_and_errors() -> None:
    deep = CnnSpace(**GLYPH, max_depth=8, width_scale=2.0)
    assert deep.param_names == ["depth", *[f"w{i}" for i in range(1, 9)]]
    assert max(deep._by_name["w1"].choices) == 512
    assert deep.to_dict()["max_depth"] == 8
    with pytest.raises(UsageError, match="input_shape"):
        CnnSpace(input_shape=(24, 24), num_classes=3)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="num_classes"):
        CnnSpace(input_shape=(1, 24, 24), num_classes=0)
    with pytest.raises(UsageError, match="max_depth"):
        CnnSpace(**GLYPH, max_depth=9)
    with pytest.raises(UsageError, match="width_scale"):
        CnnSpace(**GLYPH, width_scale=-1.0)


def test_composed_with_kd_space() -> None:
    from kd_compile.distill.hparams import kd_space
    from kd_compile.search.space import ComposedSpace

    family = create_space("cnn", **RGB32)
    composed = ComposedSpace([family, kd_space()])
    assert composed.param_names == [*family.param_names, "kd_tau", "kd_alpha"]
    assert composed.dim == family.dim + 2
    c = composed.sample(np.random.default_rng(4))
    arch = composed.split(c)[0]
    assert arch == family.sample(np.random.default_rng(4))
    assert composed.describe(c) == family.describe(arch)
