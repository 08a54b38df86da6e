"""Tests of kd_compile.data.bundle: shape/channel adaptation and the common checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from data_support import save_npz, write_folder

from kd_compile.data import load_data
from kd_compile.errors import DataError


def test_channels_and_resize(tmp_path: Path) -> None:
    x = np.zeros((10, 16, 16, 3), np.uint8)
    x[..., 0] = 255  # pure red
    x[:, ::2, ::2, 1] = 255  # fine green checker: antialiasing must average it
    p = save_npz(tmp_path / "rgb.npz", x=x, y=np.arange(10) % 2)
    gray = load_data(str(p), channels=1)
    assert gray.input_shape == (1, 16, 16)
    lum = round(0.299 * 255)
    assert int(gray.x_train[0, 0, 1, 1]) == lum
    assert int(gray.x_train[0, 0, 0, 0]) == round(0.299 * 255 + 0.587 * 255)
    small = load_data(str(p), image_size=8)
    g = small.x_train[:, 1].float()
    assert small.input_shape == (3, 8, 8) and float((g - 63.75).abs().max()) < 20
    gp = save_npz(tmp_path / "g.npz", x=x[..., 0], y=np.arange(10) % 2)
    rgb = load_data(str(gp), channels=3, image_size=32)
    assert rgb.input_shape == (3, 32, 32) and torch.equal(rgb.x_val[:, 0], rgb.x_val[:, 1])


def test_error_one_class(tmp_path: Path) -> None:
    p = save_npz(tmp_path / "one.npz", x=np.zeros((10, 8, 8), np.uint8), y=np.zeros(10, int))
    with pytest.raises(DataError, match="at least 2 classes"):
        load_data(str(p))
    write_folder(tmp_path / "f", {"only": 3})
    with pytest.raises(DataError, match="at least 2 classes"):
        load_data(str(tmp_path / "f"))
