"""Fixtures of the kd_compile.distill tests: the digits bundle and a small trained teacher."""

from __future__ import annotations

import pytest
import torch
from distill_support import SmallCNN, digits_bundle, make_cnn

from kd_compile.data import DataBundle
from kd_compile.distill import TrainConfig, train_student


@pytest.fixture(scope="session")
def digits() -> DataBundle:
    return digits_bundle()


@pytest.fixture(scope="session")
def teacher(digits: DataBundle) -> SmallCNN:
    """A 32-wide ``SmallCNN`` trained for 3 epochs with CE (left in eval mode by the tests)."""
    torch.set_num_threads(1)
    t = make_cnn(32, seed=1)
    train_student(t, digits, TrainConfig(epochs=3, use_kd=False, batch_size=64, seed=1, lr=1e-2))
    return t
