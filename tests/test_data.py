"""Tests of kd_compile.data: every loader, determinism, cache, shape adaptation and errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import kd_compile.data as data_mod
from kd_compile.data import (
    DATASETS,
    GLYPH_CHARS,
    DataBundle,
    builtin_datasets,
    load_data,
    render_glyphs,
)
from kd_compile.errors import DataError

SMALL = "glyphs:size=16,train=310,val=124,seed=1"  # 5 and 2 images per class


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own empty glyph cache (never the user's ~/.cache)."""
    d = tmp_path / "cache"
    monkeypatch.setenv("KD_COMPILE_CACHE", str(d))
    torch.set_num_threads(1)
    return d


def _check_bundle(b: DataBundle) -> None:
    assert b.x_train.dtype == torch.uint8 and b.x_val.dtype == torch.uint8
    assert b.y_train.dtype == torch.int64 and b.y_val.dtype == torch.int64
    assert b.x_train.ndim == 4 and b.x_train.shape[1:] == b.x_val.shape[1:]
    assert len(b.x_train) == len(b.y_train) and len(b.x_val) == len(b.y_val)
    assert len(b.class_names) == b.num_classes
    assert int(b.y_train.max()) < b.num_classes
    assert len(b.mean) == len(b.std) == b.input_shape[0]
    assert list(b.input_shape) == b.meta["input_shape"]


def _save_npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


# ------------------------------------------------------------------------------ built-ins


def test_builtin_names() -> None:
    assert DATASETS == ("digits", "glyphs")
    assert builtin_datasets() == ["digits", "glyphs"]


def test_digits_default() -> None:
    b = load_data("digits")
    _check_bundle(b)
    assert b.name == "digits:size=16,seed=0"
    assert b.input_shape == (1, 16, 16)
    assert len(b.x_train) + len(b.x_val) == 1797
    assert b.num_classes == 10 and b.class_names == [str(i) for i in range(10)]
    # Stratified 80/20: every class is ~20% val.
    for c in range(10):
        n_val, n_tr = int((b.y_val == c).sum()), int((b.y_train == c).sum())
        assert 0.15 < n_val / (n_val + n_tr) < 0.25
    x, _ = b.train_tensors()
    assert abs(float(x.mean())) < 1e-3 and abs(float(x.std()) - 1) < 1e-2
    assert int(b.x_train.max()) == 255  # 0..16 ink counts scaled to the full range


def test_digits_size_and_seed_options() -> None:
    b = load_data("digits:size=8,seed=4")
    assert b.input_shape == (1, 8, 8) and b.meta["seed"] == 4
    assert load_data("digits", image_size=12).input_shape == (1, 12, 12)
    other = load_data("digits", seed=5)
    assert not torch.equal(other.y_val, load_data("digits").y_val)


def test_glyphs_small() -> None:
    b = load_data(SMALL)
    _check_bundle(b)
    assert b.name == SMALL
    assert b.input_shape == (1, 16, 16) and len(b.x_train) == 310 and len(b.x_val) == 124
    assert b.num_classes == 62 and "".join(b.class_names) == GLYPH_CHARS
    assert torch.bincount(b.y_train, minlength=62).tolist() == [5] * 62  # balanced
    assert torch.bincount(b.y_val, minlength=62).tolist() == [2] * 62
    per_image_std = b.x_train.float().flatten(1).std(1)
    assert float(per_image_std.min()) > 1.0  # no blank images
    assert b.meta["cache_hit"] is False and b.meta["version"] == data_mod.GLYPHS_VERSION


def test_glyphs_uses_every_font() -> None:
    atlas, ok = data_mod._glyph_atlas()
    assert atlas.shape == (3, len(data_mod.GLYPH_FONTS), 62, 64, 64)
    assert ok.all(), "every bundled font must have all 62 characters"
    ink = atlas[0].flatten(2).sum(-1)  # (F, 62)
    assert float(ink.min()) > 5.0
    # Dilated strokes carry more ink, eroded ones less.
    assert bool((atlas[1].sum() > atlas[0].sum()) and (atlas[2].sum() < atlas[0].sum()))


def test_render_glyphs_deterministic() -> None:
    x1, y1 = render_glyphs(130, size=20, seed=5)
    x2, y2 = render_glyphs(130, size=20, seed=5)
    x3, _ = render_glyphs(130, size=20, seed=6)
    assert x1.shape == (130, 1, 20, 20) and x1.dtype == np.uint8
    assert x1.tobytes() == x2.tobytes() and np.array_equal(y1, y2)
    assert x1.tobytes() != x3.tobytes()


def test_glyphs_deterministic_across_caches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = load_data("glyphs:size=16,train=62,val=62", seed=3)
    monkeypatch.setenv("KD_COMPILE_CACHE", str(tmp_path / "other"))
    b = load_data("glyphs:size=16,train=62,val=62,seed=3")  # spec seed == kwarg seed
    assert b.meta["cache_hit"] is False
    assert a.x_train.numpy().tobytes() == b.x_train.numpy().tobytes()
    assert torch.equal(a.y_val, b.y_val) and torch.equal(a.x_val, b.x_val)
    c = load_data("glyphs:size=16,train=62,val=62,seed=4")
    assert not torch.equal(a.x_train, c.x_train)


def test_glyphs_val_does_not_depend_on_train_count() -> None:
    a = load_data("glyphs:size=16,train=62,val=62")
    b = load_data("glyphs:size=16,train=124,val=62")
    assert torch.equal(a.x_val, b.x_val)


def test_glyphs_cache_hit(_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = load_data(SMALL)
    files = list(_cache.glob("glyphs-v*.npz"))
    assert len(files) == 1 and first.meta["cache"] == str(files[0])

    def boom(*a: object, **k: object) -> None:
        raise AssertionError("generator called despite a cached copy")

    monkeypatch.setattr(data_mod, "render_glyphs", boom)
    second = load_data(SMALL)
    assert second.meta["cache_hit"] is True
    assert torch.equal(first.x_train, second.x_train) and torch.equal(first.y_val, second.y_val)


def test_glyphs_corrupt_cache_is_regenerated(_cache: Path) -> None:
    first = load_data(SMALL)
    Path(first.meta["cache"]).write_bytes(b"not a zip")
    again = load_data(SMALL)
    assert again.meta["cache_hit"] is False and torch.equal(first.x_train, again.x_train)
    assert load_data(SMALL).meta["cache_hit"] is True


def test_glyphs_image_size_renders_natively_or_resizes() -> None:
    native = load_data("glyphs:train=62,val=62", image_size=20)
    assert native.input_shape == (1, 20, 20) and native.meta["size"] == 20
    big = load_data("glyphs:train=62,val=62", image_size=40, channels=3)
    assert big.input_shape == (3, 40, 40) and big.meta["size"] == 24
    assert torch.equal(big.x_train[:, 0], big.x_train[:, 2])


# ------------------------------------------------------------------------------ .npz


def test_npz_xy_nhw_uint8_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (100, 8, 8), dtype=np.uint8)
    y = np.repeat(np.arange(4), 25)
    p = _save_npz(tmp_path / "d.npz", x=x, y=y)
    b = load_data(str(p))
    _check_bundle(b)
    assert b.input_shape == (1, 8, 8) and len(b.x_val) == 20 and len(b.x_train) == 80
    assert torch.bincount(b.y_val).tolist() == [5, 5, 5, 5]  # stratified
    # The split is a partition of the original images.
    all_x = torch.cat([b.x_train, b.x_val])[:, 0].numpy()
    assert sorted(map(bytes, all_x)) == sorted(map(bytes, x))
    again, other = load_data(str(p)), load_data(str(p), seed=1)
    assert torch.equal(again.x_val, b.x_val) and not torch.equal(other.x_val, b.x_val)


def test_npz_pre_split_nhwc_float(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    xtr = rng.random((30, 6, 6, 3)).astype(np.float32)
    xtr[0] = 1.0
    p = _save_npz(
        tmp_path / "d.npz",
        x_train=xtr,
        y_train=np.arange(30) % 3,
        x_val=rng.random((9, 6, 6, 3)),
        y_val=np.arange(9) % 3,
        class_names=np.array(["cat", "dog", "emu"]),
    )
    b = load_data(str(p))
    _check_bundle(b)
    assert b.input_shape == (3, 6, 6) and len(b.x_train) == 30 and len(b.x_val) == 9
    assert b.class_names == ["cat", "dog", "emu"]
    assert int(b.x_train[0].min()) == 255
    expect = np.rint(xtr[1].transpose(2, 0, 1) * 255).astype(np.uint8)
    assert np.array_equal(b.x_train[1].numpy(), expect)
    assert b.meta["split"] == "file"


def test_npz_nchw_and_float_labels(tmp_path: Path) -> None:
    x = np.zeros((20, 3, 10, 10), np.uint8)
    x[:, 1] = 200
    p = _save_npz(tmp_path / "d.npz", x=x, y=(np.arange(20) % 2).astype(np.float64))
    b = load_data(str(p))
    assert b.input_shape == (3, 10, 10) and b.num_classes == 2
    assert b.mean[1] == pytest.approx(200 / 255) and b.std[1] == 1.0  # constant channel


# ------------------------------------------------------------------------------ ImageFolder


def _write_folder(
    root: Path, classes: dict[str, int], size: tuple[int, int] = (12, 10), mode: str = "L"
) -> None:
    rng = np.random.default_rng(0)
    for cname, n in classes.items():
        (root / cname).mkdir(parents=True)
        for i in range(n):
            shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
            arr = rng.integers(0, 256, shape, dtype=np.uint8)
            Image.fromarray(arr, mode=mode).save(root / cname / f"{i}.png")


def test_folder_gray(tmp_path: Path) -> None:
    _write_folder(tmp_path / "imgs", {"b": 5, "a": 5, "c": 10})
    b = load_data(str(tmp_path / "imgs"))
    _check_bundle(b)
    assert b.class_names == ["a", "b", "c"]
    assert b.input_shape == (1, 10, 12)  # (C, H, W) of the first image
    assert len(b.x_train) + len(b.x_val) == 20 and torch.bincount(b.y_val).tolist() == [1, 1, 2]


def test_folder_rgb_resized_and_presplit(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    _write_folder(root / "train", {"x": 4, "y": 4}, size=(20, 20), mode="RGB")
    _write_folder(root / "val", {"x": 2, "y": 2}, size=(30, 18), mode="RGB")
    b = load_data(str(root), image_size=16)
    _check_bundle(b)
    assert b.input_shape == (3, 16, 16) and len(b.x_train) == 8 and len(b.x_val) == 4
    assert b.class_names == ["x", "y"] and b.meta["split"] == "folders train/val"


# ------------------------------------------------------------------------------ adaptation


def test_channels_and_resize(tmp_path: Path) -> None:
    x = np.zeros((10, 16, 16, 3), np.uint8)
    x[..., 0] = 255  # pure red
    x[:, ::2, ::2, 1] = 255  # fine green checker: antialiasing must average it
    p = _save_npz(tmp_path / "rgb.npz", x=x, y=np.arange(10) % 2)
    gray = load_data(str(p), channels=1)
    assert gray.input_shape == (1, 16, 16)
    lum = round(0.299 * 255)
    assert int(gray.x_train[0, 0, 1, 1]) == lum
    assert int(gray.x_train[0, 0, 0, 0]) == round(0.299 * 255 + 0.587 * 255)
    small = load_data(str(p), image_size=8)
    g = small.x_train[:, 1].float()
    assert small.input_shape == (3, 8, 8) and float((g - 63.75).abs().max()) < 20
    gp = _save_npz(tmp_path / "g.npz", x=x[..., 0], y=np.arange(10) % 2)
    rgb = load_data(str(gp), channels=3, image_size=32)
    assert rgb.input_shape == (3, 32, 32) and torch.equal(rgb.x_val[:, 0], rgb.x_val[:, 1])


def test_hint_roundtrip(tmp_path: Path) -> None:
    x = np.random.default_rng(0).integers(0, 256, (40, 9, 9), dtype=np.uint8)
    p = _save_npz(tmp_path / "d.npz", x=x, y=np.arange(40) % 4)
    b = load_data(str(p), image_size=12, channels=3)
    h = b.hint()
    again = load_data(None, hint=h)
    assert again.input_shape == (3, 12, 12) and torch.equal(again.x_train, b.x_train)
    g = load_data("glyphs:size=16,train=62,val=62")
    assert torch.equal(load_data(None, hint=g.hint()).x_val, g.x_val)
    # An explicit spec wins over the hint.
    assert load_data("digits", hint=h).name.startswith("digits")


# ------------------------------------------------------------------------------ errors


def test_error_no_data() -> None:
    with pytest.raises(DataError, match=r"no data given.*glyphs\|digits\|path\.npz\|folder"):
        load_data(None)


def test_error_missing_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data path not found"):
        load_data(str(tmp_path / "nope.npz"))
    with pytest.raises(DataError, match="data path not found"):
        load_data(None, hint={"spec": str(tmp_path / "gone"), "meta": {}})


def test_error_corrupt_npz(tmp_path: Path) -> None:
    p = tmp_path / "bad.npz"
    p.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(DataError, match=r"cannot read .*bad\.npz as \.npz"):
        load_data(str(p))
    q = _save_npz(tmp_path / "keys.npz", images=np.zeros((3, 4, 4)))
    with pytest.raises(DataError, match="expected arrays x,y.*found images"):
        load_data(str(q))


def test_error_empty_dataset(tmp_path: Path) -> None:
    p = _save_npz(tmp_path / "e.npz", x=np.zeros((0, 8, 8), np.uint8), y=np.zeros(0, np.int64))
    with pytest.raises(DataError, match="empty"):
        load_data(str(p))


def test_error_one_class(tmp_path: Path) -> None:
    p = _save_npz(tmp_path / "one.npz", x=np.zeros((10, 8, 8), np.uint8), y=np.zeros(10, int))
    with pytest.raises(DataError, match="at least 2 classes"):
        load_data(str(p))
    _write_folder(tmp_path / "f", {"only": 3})
    with pytest.raises(DataError, match="at least 2 classes"):
        load_data(str(tmp_path / "f"))


def test_error_labels_not_integers(tmp_path: Path) -> None:
    p = _save_npz(tmp_path / "l.npz", x=np.zeros((4, 8, 8), np.uint8), y=np.array([0, 1.5, 1, 0]))
    with pytest.raises(DataError, match="labels must be integers"):
        load_data(str(p))
    q = _save_npz(tmp_path / "s.npz", x=np.zeros((2, 8, 8), np.uint8), y=np.array(["a", "b"]))
    with pytest.raises(DataError, match="labels must be integers"):
        load_data(str(q))


def test_error_length_mismatch(tmp_path: Path) -> None:
    p = _save_npz(tmp_path / "m.npz", x=np.zeros((5, 8, 8), np.uint8), y=np.arange(4))
    with pytest.raises(DataError, match="x has 5 images but y has 4 labels"):
        load_data(str(p))


def test_error_bad_pixels(tmp_path: Path) -> None:
    p = _save_npz(tmp_path / "f.npz", x=np.full((4, 8, 8), 7.0), y=np.arange(4) % 2)
    with pytest.raises(DataError, match=r"float images must be in \[0, 1\]"):
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


def test_glyphs_class_subset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KD_COMPILE_CACHE", str(tmp_path))
    b = load_data("glyphs:size=16,train=100,val=40,classes=10")
    assert b.num_classes == 10 and "".join(b.class_names) == GLYPH_CHARS[:10]
    assert sorted(set(b.y_train.tolist())) == list(range(10))
    assert np.bincount(b.y_train.numpy()).tolist() == [10] * 10
    assert "classes=10" in b.name
    # the default class count renders exactly what it rendered before the option existed
    x1, y1 = render_glyphs(70, size=16, seed=3)
    x2, y2 = render_glyphs(70, size=16, seed=3, classes=62)
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    with pytest.raises(DataError, match="classes"):
        load_data("glyphs:size=16,train=10,val=10,classes=1")
