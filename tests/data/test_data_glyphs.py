"""Tests of kd_compile.data.glyphs: the generator, its determinism and its cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from data_support import check_bundle

import kd_compile.data.glyphs as glyphs_mod
from kd_compile.data import GLYPH_CHARS, GLYPH_FONTS, GLYPHS_VERSION, load_data, render_glyphs
from kd_compile.errors import DataError

SMALL = "glyphs:size=16,train=310,val=124,seed=1"  # 5 and 2 images per class


def test_glyphs_small() -> None:
    b = load_data(SMALL)
    check_bundle(b)
    assert b.name == SMALL
    assert b.input_shape == (1, 16, 16) and len(b.x_train) == 310 and len(b.x_val) == 124
    assert b.num_classes == 62 and "".join(b.class_names) == GLYPH_CHARS
    assert torch.bincount(b.y_train, minlength=62).tolist() == [5] * 62  # balanced
    assert torch.bincount(b.y_val, minlength=62).tolist() == [2] * 62
    per_image_std = b.x_train.float().flatten(1).std(1)
    assert float(per_image_std.min()) > 1.0  # no blank images
    assert b.meta["cache_hit"] is False and b.meta["version"] == GLYPHS_VERSION


def test_glyphs_uses_every_font() -> None:
    atlas, ok = glyphs_mod.glyph_atlas()
    assert atlas.shape == (3, len(GLYPH_FONTS), 62, 64, 64)
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
    assert torch.equal(a.x_test, b.x_test)


def test_glyphs_test_set_is_its_own_stream() -> None:
    a = load_data("glyphs:size=16,train=62,val=62")
    assert len(a.x_test) == 62 and torch.bincount(a.y_test, minlength=62).tolist() == [1] * 62  # as many as val
    big = load_data("glyphs:size=16,train=62,val=62,test=124")
    assert big.name.endswith(",test=124") and len(big.x_test) == 124
    # more test images change neither train nor val, and no test image is a train or val image
    assert torch.equal(a.x_train, big.x_train) and torch.equal(a.x_val, big.x_val)
    seen = {bytes(v) for v in torch.cat([a.x_train, a.x_val]).numpy()}
    assert not seen & {bytes(v) for v in big.x_test.numpy()}
    with pytest.raises(DataError, match="test must be >= 0"):
        load_data("glyphs:size=16,train=62,val=62,test=-1")


def test_glyphs_train_val_cache_key_ignores_the_test_count(_cache: Path) -> None:
    a = load_data("glyphs:size=16,train=62,val=62")
    b = load_data("glyphs:size=16,train=62,val=62,test=124")
    assert a.meta["cache"] == b.meta["cache"] and a.meta["test_cache"] != b.meta["test_cache"]


def test_glyphs_cache_hit(_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = load_data(SMALL)
    files = sorted(str(f) for f in _cache.glob("glyphs-v*.npz"))
    assert files == sorted([first.meta["cache"], first.meta["test_cache"]])

    def boom(*a: object, **k: object) -> None:
        raise AssertionError("generator called despite a cached copy")

    # the loader calls the generator through its own module
    monkeypatch.setattr(glyphs_mod, "render_glyphs", boom)
    second = load_data(SMALL)
    assert second.meta["cache_hit"] is True
    assert torch.equal(first.x_train, second.x_train) and torch.equal(first.y_val, second.y_val)
    assert torch.equal(first.x_test, second.x_test)


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
