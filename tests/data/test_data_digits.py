"""Tests of kd_compile.data.digits: scikit-learn's digits, sizes, seeds and split."""

from __future__ import annotations

import torch
from data_support import check_bundle

from kd_compile.data import load_data


def test_digits_default() -> None:
    b = load_data("digits")
    check_bundle(b)
    assert b.name == "digits:size=16,seed=0"
    assert b.input_shape == (1, 16, 16)
    assert len(b.x_train) + len(b.x_val) + len(b.x_test) == 1797
    assert b.num_classes == 10 and b.class_names == [str(i) for i in range(10)]
    # Stratified 70/15/15: every class is ~15% val and ~15% test.
    for c in range(10):
        n_val, n_te, n_tr = (int((t == c).sum()) for t in (b.y_val, b.y_test, b.y_train))
        assert 0.13 < n_val / (n_val + n_te + n_tr) < 0.17 and 0.13 < n_te / (n_val + n_te + n_tr) < 0.17
    x, _ = b.train_tensors()
    assert abs(float(x.mean())) < 1e-3 and abs(float(x.std()) - 1) < 1e-2
    assert int(b.x_train.max()) == 255  # 0..16 ink counts scaled to the full range


def test_digits_size_and_seed_options() -> None:
    b = load_data("digits:size=8,seed=4")
    assert b.input_shape == (1, 8, 8) and b.meta["seed"] == 4
    assert load_data("digits", image_size=12).input_shape == (1, 12, 12)


def test_digits_test_split_is_fixed_across_seeds() -> None:
    a, b = load_data("digits:size=8,seed=0"), load_data("digits:size=8,seed=5")
    assert torch.equal(a.x_test, b.x_test) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.y_val, b.y_val)  # the seed still moves train/val
    held = {bytes(v) for v in a.x_test.numpy()}
    assert not held & {bytes(v) for v in torch.cat([b.x_train, b.x_val]).numpy()} - {bytes(v) for v in b.x_test.numpy()}
    other = load_data("digits", seed=5)
    assert not torch.equal(other.y_val, load_data("digits").y_val)
