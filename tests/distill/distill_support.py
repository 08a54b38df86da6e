"""Helpers shared by the tests of kd_compile.distill: a digits bundle and a small CNN."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kd_compile.data import DataBundle

__all__ = ["SmallCNN", "digits_bundle", "make_cnn"]


def digits_bundle() -> DataBundle:
    """scikit-learn's 8x8 digits as a bundle: 1400 train and 397 val images, fixed shuffle."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images * 15.0, dtype=torch.float32).clamp(0, 255).to(torch.uint8)
    x = x.unsqueeze(1)  # (N, 1, 8, 8)
    y = torch.tensor(d.target, dtype=torch.int64)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    return DataBundle(
        name="digits-test",
        x_train=x[:1400],
        y_train=y[:1400],
        x_val=x[1400:],
        y_val=y[1400:],
        num_classes=10,
        class_names=[str(i) for i in range(10)],
        mean=(0.3,),
        std=(0.4,),
    )


class SmallCNN(nn.Module):
    """conv-bn-relu stem, a strided block, a 1x1 projection to ``2 * width`` and a linear head."""

    def __init__(self, width: int = 16, num_classes: int = 10, dropout: float = 0.0) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, stride=2), nn.BatchNorm2d(width), nn.ReLU())
        self.proj = nn.Conv2d(width, 2 * width, 1)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = F.relu(self.proj(self.block(self.stem(x))))
        return self.head(self.drop(f.mean(dim=(2, 3))))


def make_cnn(width: int = 16, seed: int = 0, dropout: float = 0.0) -> SmallCNN:
    """A ``SmallCNN`` whose initial weights are fixed by ``seed``."""
    torch.manual_seed(seed)
    return SmallCNN(width, dropout=dropout)
