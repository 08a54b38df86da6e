"""Tests of kd_compile.data.files: .npz and ImageFolder loading and their errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from data_support import check_bundle, save_npz, write_folder

from kd_compile.data import load_data
from kd_compile.errors import DataError


def test_npz_xy_nhw_uint8_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (100, 8, 8), dtype=np.uint8)
    y = np.repeat(np.arange(4), 25)
    p = save_npz(tmp_path / "d.npz", x=x, y=y)
    b = load_data(str(p))
    check_bundle(b)
    # stratified 70/15/15: round(25 * 0.15) = 4 per class in val and in test
    assert b.input_shape == (1, 8, 8) and len(b.x_val) == 16 and len(b.x_test) == 16 and len(b.x_train) == 68
    assert torch.bincount(b.y_val).tolist() == [4, 4, 4, 4] and torch.bincount(b.y_test).tolist() == [4, 4, 4, 4]
    # The split is a partition of the original images.
    all_x = torch.cat([b.x_train, b.x_val, b.x_test])[:, 0].numpy()
    assert sorted(map(bytes, all_x)) == sorted(map(bytes, x))
    again, other = load_data(str(p)), load_data(str(p), seed=1)
    assert torch.equal(again.x_val, b.x_val) and not torch.equal(other.x_val, b.x_val)
    # the seed moves images between train and val, never into or out of test
    assert torch.equal(other.x_test, b.x_test)


def test_npz_pre_split_nhwc_float(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    xtr = rng.random((30, 6, 6, 3)).astype(np.float32)
    xtr[0] = 1.0
    p = save_npz(
        tmp_path / "d.npz",
        x_train=xtr,
        y_train=np.arange(30) % 3,
        x_val=rng.random((9, 6, 6, 3)),
        y_val=np.arange(9) % 3,
        class_names=np.array(["cat", "dog", "emu"]),
    )
    b = load_data(str(p))
    check_bundle(b)
    # the file's val is kept; test is carved from train (round(10 * 0.15) = 2 per class)
    assert b.input_shape == (3, 6, 6) and len(b.x_train) == 24 and len(b.x_val) == 9 and len(b.x_test) == 6
    assert b.class_names == ["cat", "dog", "emu"]
    assert b.meta["split"].startswith("file train/val; test")
    seen = {bytes(v) for v in torch.cat([b.x_train, b.x_test]).numpy()}
    assert len(seen) == 30 and not seen & {bytes(v) for v in b.x_val.numpy()}
    expect = np.rint(xtr[0].transpose(2, 0, 1) * 255).astype(np.uint8)
    assert int(expect.min()) == 255 and bytes(expect) in seen


def test_npz_test_arrays_are_the_test_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    x, y = rng.integers(0, 256, (40, 5, 5), dtype=np.uint8), np.arange(40) % 2
    xte, yte = rng.integers(0, 256, (6, 5, 5), dtype=np.uint8), np.arange(6) % 2
    b = load_data(str(save_npz(tmp_path / "t.npz", x=x, y=y, x_test=xte, y_test=yte)))
    check_bundle(b)
    assert np.array_equal(b.x_test[:, 0].numpy(), xte) and b.y_test.tolist() == yte.tolist()
    assert len(b.x_train) + len(b.x_val) == 40  # nothing of x is held out when the file has a test split
    bad = save_npz(tmp_path / "bad.npz", x=x, y=y, x_test=np.zeros((3, 4, 4), np.uint8), y_test=np.zeros(3))
    with pytest.raises(DataError, match="test images"):
        load_data(str(bad))


def test_npz_nchw_and_float_labels(tmp_path: Path) -> None:
    x = np.zeros((20, 3, 10, 10), np.uint8)
    x[:, 1] = 200
    p = save_npz(tmp_path / "d.npz", x=x, y=(np.arange(20) % 2).astype(np.float64))
    b = load_data(str(p))
    assert b.input_shape == (3, 10, 10) and b.num_classes == 2
    assert b.mean[1] == pytest.approx(200 / 255) and b.std[1] == 1.0  # constant channel


def test_folder_gray(tmp_path: Path) -> None:
    write_folder(tmp_path / "imgs", {"b": 5, "a": 5, "c": 10})
    b = load_data(str(tmp_path / "imgs"))
    check_bundle(b)
    assert b.class_names == ["a", "b", "c"]
    assert b.input_shape == (1, 10, 12)  # (C, H, W) of the first image
    assert len(b.x_train) + len(b.x_val) + len(b.x_test) == 20
    assert torch.bincount(b.y_val).tolist() == [1, 1, 2] and torch.bincount(b.y_test).tolist() == [1, 1, 2]


def test_folder_rgb_resized_and_presplit(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    write_folder(root / "train", {"x": 4, "y": 4}, size=(20, 20), mode="RGB")
    write_folder(root / "val", {"x": 2, "y": 2}, size=(30, 18), mode="RGB")
    b = load_data(str(root), image_size=16)
    check_bundle(b)
    # no test/ folder: round(4 * 0.15) = 1 image per class of train/ is held out
    assert b.input_shape == (3, 16, 16) and len(b.x_train) == 6 and len(b.x_val) == 4 and len(b.x_test) == 2
    assert b.class_names == ["x", "y"] and b.meta["split"] == "folders train/, val/; test fixed"


def test_folder_test_dir_is_test_not_val(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    write_folder(root / "train", {"x": 10, "y": 10})
    write_folder(root / "test", {"x": 3, "y": 2})
    b = load_data(str(root))
    check_bundle(b)
    # test/ is the test split; val is carved from train/ (round(10 * 0.15) = 2 per class)
    assert len(b.x_test) == 5 and torch.bincount(b.y_test).tolist() == [3, 2]
    assert len(b.x_val) == 4 and len(b.x_train) == 16
    assert b.meta["split"] == "folders train/, test/; val seed 0"
    write_folder(root / "val", {"x": 1, "y": 1})
    full = load_data(str(root))
    assert (len(full.x_train), len(full.x_val), len(full.x_test)) == (20, 2, 5)
    assert full.meta["split"] == "folders train/, val/, test/"


def test_error_corrupt_npz(tmp_path: Path) -> None:
    p = tmp_path / "bad.npz"
    p.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(DataError, match=r"cannot read .*bad\.npz as \.npz"):
        load_data(str(p))
    q = save_npz(tmp_path / "keys.npz", images=np.zeros((3, 4, 4)))
    with pytest.raises(DataError, match="expected arrays x,y.*found images"):
        load_data(str(q))


def test_error_empty_dataset(tmp_path: Path) -> None:
    p = save_npz(tmp_path / "e.npz", x=np.zeros((0, 8, 8), np.uint8), y=np.zeros(0, np.int64))
    with pytest.raises(DataError, match="empty"):
        load_data(str(p))


def test_error_labels_not_integers(tmp_path: Path) -> None:
    p = save_npz(tmp_path / "l.npz", x=np.zeros((4, 8, 8), np.uint8), y=np.array([0, 1.5, 1, 0]))
    with pytest.raises(DataError, match="labels must be integers"):
        load_data(str(p))
    q = save_npz(tmp_path / "s.npz", x=np.zeros((2, 8, 8), np.uint8), y=np.array(["a", "b"]))
    with pytest.raises(DataError, match="labels must be integers"):
        load_data(str(q))


def test_error_length_mismatch(tmp_path: Path) -> None:
    p = save_npz(tmp_path / "m.npz", x=np.zeros((5, 8, 8), np.uint8), y=np.arange(4))
    with pytest.raises(DataError, match="x has 5 images but y has 4 labels"):
        load_data(str(p))


def test_error_bad_pixels(tmp_path: Path) -> None:
    p = save_npz(tmp_path / "f.npz", x=np.full((4, 8, 8), 7.0), y=np.arange(4) % 2)
    with pytest.raises(DataError, match=r"float images must be in \[0, 1\]"):
        load_data(str(p))


def test_a_nan_pixel_is_named_as_such(tmp_path: Path) -> None:
    """The range of the other pixels is in [0, 1]: the error says NaN, not a range that looks fine."""
    x = np.full((4, 8, 8), 0.5)
    x[1, 2, 3] = x[2, 0, 0] = np.nan
    p = save_npz(tmp_path / "n.npz", x=x, y=np.arange(4) % 2)
    with pytest.raises(DataError, match=r"2 pixel values are NaN \(float images must be finite, in \[0, 1\]\)"):
        load_data(str(p))


def test_error_folder_without_images(tmp_path: Path) -> None:
    (tmp_path / "f" / "a").mkdir(parents=True)
    (tmp_path / "f" / "b").mkdir()
    (tmp_path / "f" / "a" / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match="no images found"):
        load_data(str(tmp_path / "f"))
    (tmp_path / "f" / "a" / "x.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"cannot read image .*x\.png"):
        load_data(str(tmp_path / "f"))
