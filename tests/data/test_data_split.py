"""The one train/val/test split (``stratified_split``) and the test split through ``finish_bundle``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kd_compile.data.bundle import TEST_FRACTION, VAL_FRACTION, RawData, finish_bundle, stratified_split
from kd_compile.errors import DataError


def test_split_is_a_stratified_partition() -> None:
    y = np.repeat(np.arange(5), 40)
    tr, va, te = stratified_split(y, seed=3)
    assert sorted(np.concatenate([tr, va, te]).tolist()) == list(range(len(y)))
    for part, frac in ((va, VAL_FRACTION), (te, TEST_FRACTION)):
        assert np.bincount(y[part], minlength=5).tolist() == [round(40 * frac)] * 5


def test_the_seed_moves_train_and_val_but_never_test() -> None:
    y = np.repeat(np.arange(3), 30)
    a, b = stratified_split(y, seed=0), stratified_split(y, seed=1)
    assert np.array_equal(a[2], b[2]) and not np.array_equal(a[1], b[1])
    assert np.array_equal(a[1], stratified_split(y, seed=0)[1])


def test_a_source_with_its_own_val_gets_only_test_carved() -> None:
    y = np.repeat(np.arange(2), 20)
    tr, va, te = stratified_split(y, seed=0, val_fraction=0.0)
    assert len(va) == 0 and len(te) == 2 * round(20 * TEST_FRACTION) and len(tr) + len(te) == 40


def test_tiny_classes_stay_in_train_but_each_part_gets_one() -> None:
    tr, va, te = stratified_split(np.array([0, 1, 1, 2, 2]), seed=0)
    assert len(va) == 1 and len(te) == 1 and len(tr) == 3
    with pytest.raises(ValueError, match="fractions"):
        stratified_split(np.arange(4), seed=0, val_fraction=0.5, test_fraction=0.5)


def _raw(n_test: int, test_shape: tuple[int, ...] = (1, 4, 4)) -> RawData:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (8, 1, 4, 4), dtype=np.uint8)
    y = np.arange(8) % 2
    return RawData(
        "r", x, y, x[:2], y[:2], None, {},
        x_test=rng.integers(0, 256, (n_test, *test_shape), dtype=np.uint8), y_test=np.arange(n_test) % 2,
    )  # fmt: skip


def test_finish_bundle_adapts_and_checks_the_test_split() -> None:
    b = finish_bundle(_raw(3), image_size=8, channels=3)
    assert b.has_test and b.x_test.shape == (3, 3, 8, 8)
    x, y = b.test_tensors()
    assert torch.equal(x, b.normalize(b.x_test)) and y.tolist() == [0, 1, 0]
    with pytest.raises(DataError, match="test split is empty"):
        finish_bundle(_raw(0), image_size=None, channels=None)
    with pytest.raises(DataError, match="test images"):
        finish_bundle(_raw(2, (1, 5, 5)), image_size=None, channels=None)


def test_a_bundle_without_test_says_so() -> None:
    raw = _raw(1)
    raw.x_test = raw.y_test = None
    b = finish_bundle(raw, image_size=None, channels=None)
    assert not b.has_test
    with pytest.raises(DataError, match="no test split"):
        b.test_tensors()
