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
