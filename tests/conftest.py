from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# the suite runs on 2 cores: at most 2 torch threads, and one per worker when pytest-xdist runs the
# tests in several processes (``make test``: one worker per core)
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Keep generated data and caches inside the test run."""
    d = tmp_path_factory.mktemp("kd_cache")
    old = os.environ.get("KD_COMPILE_CACHE")
    os.environ["KD_COMPILE_CACHE"] = str(d)
    yield d
    if old is None:
        os.environ.pop("KD_COMPILE_CACHE", None)
    else:
        os.environ["KD_COMPILE_CACHE"] = old


@pytest.fixture(scope="session")
def digits_teacher(tmp_path_factory) -> Path:
    """A small CNN teacher trained for a few seconds on scikit-learn's digits (real images)."""
    from kd_compile.data import load_data
    from kd_compile.distill import TrainConfig, train_student
    from kd_compile.export import space_kwargs
    from kd_compile.students import create_space
    from kd_compile.teacher import save_checkpoint

    data = load_data("digits", image_size=12)
    space = create_space("cnn", input_shape=data.input_shape, num_classes=data.num_classes, max_depth=3)
    config = space.validate({**space.default(), "depth": 3, "w1": 32, "w2": 64, "w3": 64})
    torch.manual_seed(0)
    model = space.build(config)
    res = train_student(model, data, TrainConfig(epochs=3, use_kd=False, seed=0))
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    save_checkpoint(
        path,
        space="cnn",
        space_kwargs=space_kwargs(space),
        config=config,
        state_dict=model.state_dict(),
        meta={
            "data": data.hint(),
            "normalize": {"mean": list(data.mean), "std": list(data.std)},
            "accuracy": res.val_acc,
        },
    )
    return path
