"""Datasets as in-memory tensors: built-in ``digits`` and ``glyphs``, ``.npz`` and ImageFolder.

Every loader returns a ``DataBundle``: uint8 images (N, C, H, W), int64 labels (N,), a fixed
train/val split, class names and the normalisation (mean/std per channel) that models expect.
``bundle.train_tensors()`` / ``val_tensors()`` give normalised float32 tensors.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class DataBundle:
    """A dataset split into train and val.

    Attributes:
        name: the spec it was loaded from (``glyphs``, ``digits``, a path).
        x_train: uint8 tensor (N, C, H, W).
        y_train: int64 tensor (N,).
        x_val: uint8 tensor (M, C, H, W).
        y_val: int64 tensor (M,).
        num_classes: number of classes.
        class_names: one name per class.
        mean, std: per-channel normalisation applied to x / 255.
        meta: free-form (generator seed, resolution, source).
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    num_classes: int
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.x_train.shape[1:])  # type: ignore[return-value]

    def normalize(self, x_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) -> normalised float32 (N, C, H, W)."""
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1)
        return (x_uint8.float() / 255.0 - mean) / std

    def train_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.normalize(self.x_train), self.y_train

    def val_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.normalize(self.x_val), self.y_val

    def hint(self) -> dict[str, Any]:
        """What a teacher checkpoint stores so the same data can be loaded without --data."""
        return {"spec": self.name, "meta": dict(self.meta)}

    def replace(self, **kw: Any) -> DataBundle:
        return dataclasses.replace(self, **kw)
