"""Tests of the teacher-facing preprocessing in kd_compile.data: resize filter, centre crop,
non-square sizes, hint confinement and the native-shape peek."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from data_support import check_bundle, save_npz, write_folder
from PIL import Image

from kd_compile.data import load_data, native_shape
from kd_compile.data.bundle import adapt_images
from kd_compile.data.preprocess import center_crop_box, scaled_size
from kd_compile.errors import DataError


def _images(n: int = 3, c: int = 1, h: int = 20, w: int = 20) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(0).integers(0, 256, (n, c, h, w), dtype=np.uint8))


def test_default_resize_is_unchanged() -> None:
    x = _images(h=9, w=9)
    old = F.interpolate(x.float(), size=(12, 12), mode="bilinear", align_corners=False, antialias=False)
    assert torch.equal(adapt_images(x, 12, None), old.round().clamp(0, 255).to(torch.uint8))
    assert torch.equal(adapt_images(x, (12, 12), None), adapt_images(x, 12, None))


def test_geometry() -> None:
    assert scaled_size((20, 40), (10, 10), 0.5) == (20, 40)  # shorter side to 20, aspect kept
    assert scaled_size((40, 20), (16, 16), 0.875) == (36, 18)
    assert scaled_size((20, 20), (10, 12), 0.5) == (20, 24)  # non-square target: each side
    assert scaled_size((7, 9), (10, 10), 1.0) == (10, 10)
    assert center_crop_box((20, 40), (10, 10)) == (5, 15)


def test_crop_keeps_the_centre() -> None:
    x = _images()
    assert torch.equal(adapt_images(x, 10, None, crop_pct=0.5), x[:, :, 5:15, 5:15])
    y = adapt_images(x, 16, None, crop_pct=0.875)  # 20 -> 18, centre 16
    assert y.shape == (3, 1, 16, 16)
    assert torch.equal(y, adapt_images(adapt_images(x, 18, None), 18, None)[:, :, 1:17, 1:17])


def test_filters_and_non_square() -> None:
    x = _images(h=8, w=8)
    near = adapt_images(x, 16, None, interpolation="nearest")
    assert torch.equal(near, x.repeat_interleave(2, 2).repeat_interleave(2, 3))
    assert not torch.equal(adapt_images(x, 13, None, interpolation="bicubic"), adapt_images(x, 13, None))
    assert adapt_images(x, (6, 10), 3).shape == (3, 3, 6, 10)
    with pytest.raises(DataError, match="interpolation"):
        adapt_images(x, 12, None, interpolation="lanczos")


def test_load_data_records_filter_and_crop(tmp_path: Path) -> None:
    p = save_npz(tmp_path / "d.npz", x=_images(40, 1, 20, 20)[:, 0].numpy(), y=np.arange(40) % 4)
    b = load_data(str(p), image_size=(16, 12), interpolation="bicubic", crop_pct=0.875)
    check_bundle(b)
    assert b.input_shape == (1, 16, 12) and b.meta["interpolation"] == "bicubic" and b.meta["crop_pct"] == 0.875
    again = load_data(None, hint=b.hint())  # a hint re-applies them
    assert torch.equal(again.x_train, b.x_train)
    assert "crop_pct" not in load_data(str(p), image_size=16).meta


def test_folder_resize_and_crop_with_pil(tmp_path: Path) -> None:
    write_folder(tmp_path / "f", {"a": 2, "b": 2}, size=(10, 12))  # width 10, height 12
    b = load_data(str(tmp_path / "f"), image_size=8, crop_pct=0.5, interpolation="bicubic")
    first = sorted((tmp_path / "f" / "a").glob("*.png"))[0]
    with Image.open(first) as im:
        im = im.convert("RGB").resize((16, 19), Image.Resampling.BICUBIC)  # shorter side 16
        top, left = center_crop_box((19, 16), (8, 8))
        want = np.asarray(im.crop((left, top, left + 8, top + 8)))[:, :, 0]
    x = torch.cat([b.x_train, b.x_val])
    assert b.input_shape == (1, 8, 8) and any(np.array_equal(want, img[0].numpy()) for img in x)


def test_bad_arguments() -> None:
    with pytest.raises(DataError, match="crop_pct"):
        load_data("digits", crop_pct=1.5)
    with pytest.raises(DataError, match="interpolation"):
        load_data("digits", interpolation="area")
    with pytest.raises(DataError, match="image_size"):
        load_data("digits", image_size=(0, 4))


def test_hint_root_confines_paths(tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    root.mkdir()
    save_npz(root / "d.npz", x=_images(40, 1, 8, 8)[:, 0].numpy(), y=np.arange(40) % 4)
    save_npz(tmp_path / "outside.npz", x=_images(40, 1, 8, 8)[:, 0].numpy(), y=np.arange(40) % 4)
    b = load_data(None, hint={"spec": "d.npz", "meta": {}}, hint_root=root)
    assert b.name == str((root / "d.npz").resolve())
    for spec in ("../outside.npz", str(tmp_path / "outside.npz")):
        with pytest.raises(DataError, match="leads outside"):
            load_data(None, hint={"spec": spec, "meta": {}}, hint_root=root)
    assert load_data(None, hint={"spec": "digits", "meta": {}}, hint_root=root).name.startswith("digits")
    # an image folder inside the root whose files link outside it
    write_folder(tmp_path / "elsewhere", {"a": 2, "b": 2})
    (root / "imgs" / "a").mkdir(parents=True)
    (root / "imgs" / "b").mkdir(parents=True)
    for c in ("a", "b"):
        for f in (tmp_path / "elsewhere" / c).glob("*.png"):
            (root / "imgs" / c / f.name).symlink_to(f)
    with pytest.raises(DataError, match="resolves outside"):
        load_data(None, hint={"spec": "imgs", "meta": {}}, hint_root=root)


def test_native_shape(tmp_path: Path) -> None:
    assert native_shape("digits") == (1, 16, 16) and native_shape("digits:size=20") == (1, 20, 20)
    assert native_shape("glyphs") == (1, 24, 24)
    for x, want in (
        (np.zeros((4, 9, 7), np.uint8), (1, 9, 7)),
        (np.zeros((4, 9, 7, 3), np.uint8), (3, 9, 7)),
        (np.zeros((4, 3, 9, 7), np.float32), (3, 9, 7)),
    ):
        p = save_npz(tmp_path / "d.npz", x=x, y=np.arange(4))
        assert native_shape(str(p)) == want
    write_folder(tmp_path / "f", {"a": 1, "b": 1}, size=(12, 10), mode="RGB")
    assert native_shape(str(tmp_path / "f")) == (3, 10, 12)
    for spec in (None, "", "nope", str(tmp_path / "missing.npz"), "digits:size=x"):
        assert native_shape(spec) is None
