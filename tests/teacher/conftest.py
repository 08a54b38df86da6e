"""Fixtures of the teacher tests: teachers trained for a few seconds on digits (16 px)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn
from teacher_support import small_net, train


@dataclass
class Trained:
    """A trained teacher: the module (eval mode), how its inputs were normalised, its val accuracy."""

    module: nn.Module
    mean: tuple[float, ...]
    std: tuple[float, ...]
    accuracy: float


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.inference_mode():
        return float((model(x).argmax(1) == y).float().mean())


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread per test: the suite shares two cores, and two threads contend badly."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def digits16():
    """scikit-learn's digits at 16x16, 1 channel (the built-in ``digits``)."""
    from kd_compile.data import load_data

    return load_data("digits")


@pytest.fixture(scope="session")
def net_teacher(digits16) -> Trained:
    """A 5K-parameter CNN trained on digits normalised with the data's own mean/std (what
    kd-compile falls back to for a teacher that records none)."""
    x, y = digits16.train_tensors()
    model = train(small_net(1), x, y, epochs=5, lr=1e-2)
    xv, yv = digits16.val_tensors()
    return Trained(model, digits16.mean, digits16.std, _accuracy(model, xv, yv))


@pytest.fixture(scope="session")
def timm_teacher(digits16) -> Trained:
    """timm's ``test_resnet`` (3 channels) trained on gray digits repeated to RGB, normalised
    with timm's pretrained_cfg mean/std (0.5) rather than the data's, at 16 px (timm's default
    for it is 160)."""
    import timm

    data = digits16.replace(
        x_train=digits16.x_train.repeat(1, 3, 1, 1),
        x_val=digits16.x_val.repeat(1, 3, 1, 1),
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
    )
    x, y = data.train_tensors()
    torch.manual_seed(0)
    model = train(timm.create_model("test_resnet", num_classes=10), x, y, epochs=3, lr=3e-3)
    xv, yv = data.val_tensors()
    return Trained(model, data.mean, data.std, _accuracy(model, xv, yv))
