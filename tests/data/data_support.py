"""Helpers shared by the tests of kd_compile.data: bundle invariants and tiny input files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from kd_compile.data import DataBundle

__all__ = ["check_bundle", "save_npz", "write_folder"]


def check_bundle(b: DataBundle) -> None:
    """Assert the invariants every loaded bundle keeps (dtypes, shapes, classes, stats)."""
    assert b.x_train.dtype == torch.uint8 and b.x_val.dtype == torch.uint8
    assert b.y_train.dtype == torch.int64 and b.y_val.dtype == torch.int64
    assert b.x_train.ndim == 4 and b.x_train.shape[1:] == b.x_val.shape[1:]
    assert len(b.x_train) == len(b.y_train) and len(b.x_val) == len(b.y_val)
    assert len(b.class_names) == b.num_classes
    assert int(b.y_train.max()) < b.num_classes
    assert len(b.mean) == len(b.std) == b.input_shape[0]
    assert list(b.input_shape) == b.meta["input_shape"]
    # every loader brings a held-out test split, shaped like train
    assert b.has_test and b.x_test is not None and b.y_test is not None
    assert b.x_test.dtype == torch.uint8 and b.y_test.dtype == torch.int64
    assert b.x_test.shape[1:] == b.x_train.shape[1:] and len(b.x_test) == len(b.y_test) > 0
    assert int(b.y_test.max()) < b.num_classes
    x, y = b.test_tensors()
    assert x.dtype == torch.float32 and x.shape == b.x_test.shape and torch.equal(y, b.y_test)


def save_npz(path: Path, **arrays: np.ndarray) -> Path:
    """Write ``arrays`` to ``path`` with ``np.savez`` and return the path."""
    np.savez(path, **arrays)
    return path


def write_folder(
    root: Path, classes: dict[str, int], size: tuple[int, int] = (12, 10), mode: str = "L"
) -> None:
    """Write an ImageFolder tree of random PNGs: ``classes`` maps class name -> image count."""
    rng = np.random.default_rng(0)
    for cname, n in classes.items():
        (root / cname).mkdir(parents=True)
        for i in range(n):
            shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
            arr = rng.integers(0, 256, shape, dtype=np.uint8)
            Image.fromarray(arr, mode=mode).save(root / cname / f"{i}.png")
