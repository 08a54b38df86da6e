"""Tests of kd_compile.data.load: spec parsing, teacher hints, dispatch and its errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from data_support import save_npz

from kd_compile.data import DATASETS, builtin_datasets, load_data
from kd_compile.errors import DataError


def test_builtin_names() -> None:
    assert DATASETS == ("digits", "glyphs")
    assert builtin_datasets() == ["digits", "glyphs"]


def test_hint_roundtrip(tmp_path: Path) -> None:
    x = np.random.default_rng(0).integers(0, 256, (40, 9, 9), dtype=np.uint8)
    p = save_npz(tmp_path / "d.npz", x=x, y=np.arange(40) % 4)
    b = load_data(str(p), image_size=12, channels=3)
    h = b.hint()
    again = load_data(None, hint=h)
    assert again.input_shape == (3, 12, 12) and torch.equal(again.x_train, b.x_train)
    g = load_data("glyphs:size=16,train=62,val=62")
    assert torch.equal(load_data(None, hint=g.hint()).x_val, g.x_val)
    # An explicit spec wins over the hint.
    assert load_data("digits", hint=h).name.startswith("digits")


def test_error_no_data() -> None:
    with pytest.raises(DataError, match=r"no data given.*glyphs\|digits\|path\.npz\|folder"):
        load_data(None)


def test_error_missing_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data path not found"):
        load_data(str(tmp_path / "nope.npz"))
    with pytest.raises(DataError, match="data path not found"):
        load_data(None, hint={"spec": str(tmp_path / "gone"), "meta": {}})


def test_error_unknown_builtin_suggests() -> None:
    with pytest.raises(DataError, match="unknown dataset 'glyph'; did you mean 'glyphs'"):
        load_data("glyph")
    with pytest.raises(DataError, match="did you mean 'digits'"):
        load_data("digit")
    with pytest.raises(DataError, match="unknown dataset 'imagenet'") as e:
        load_data("imagenet")
    assert "did you mean" not in str(e.value)


def test_error_bad_options() -> None:
    with pytest.raises(DataError, match="bad option 'colour=1' for glyphs"):
        load_data("glyphs:colour=1")
    with pytest.raises(DataError, match="must be an integer"):
        load_data("glyphs:size=big")
    with pytest.raises(DataError, match="size must be in 16..32"):
        load_data("glyphs:size=64,train=62,val=62")
    with pytest.raises(DataError, match="channels must be 1 or 3"):
        load_data("digits", channels=2)
    with pytest.raises(DataError, match="hint is malformed"):
        load_data(None, hint={"meta": {}})
